"""What a dynamically linked workload needs in the guest: its program interpreter and the
shared libraries it names (DT_NEEDED, transitively), taken from the host.

Each file goes into the initramfs at the path the guest's loader looks for it: the
interpreter at its PT_INTERP path, each library in the first default directory of the
host that holds it (glibc's loader searches the same built-in directories in the guest,
which has no ld.so.cache).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from vmfault.errors import ImageError

__all__ = ["LIBRARY_DIRS", "RuntimeFile", "elf_interpreter", "runtime_files"]

LIBRARY_DIRS: tuple[str, ...] = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
"""Where the host's (and the guest's) loader looks for a library, in order."""


@dataclass(frozen=True)
class RuntimeFile:
    """A host file and the absolute path it takes in the guest."""

    guest_path: str
    host_path: Path


def _read(path: Path) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """(PT_INTERP, DT_NEEDED, DT_RUNPATH/DT_RPATH directories) of the ELF at `path`."""
    try:
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            interpreter = None
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_INTERP":
                    interpreter = segment.data().rstrip(b"\0").decode()
            needed: list[str] = []
            search: list[str] = []
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    tags: Iterable[Any] = section.iter_tags()  # fields set per tag kind
                    for tag in tags:
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)
                        elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                            text = tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath
                            search.extend(d for d in text.split(":") if d.startswith("/"))
            return interpreter, tuple(needed), tuple(search)
    except (OSError, ELFError) as exc:
        raise ImageError(f"cannot read {path}: {exc}", hint="give an ELF executable") from exc


def elf_interpreter(path: Path) -> str | None:
    """The program interpreter (PT_INTERP) of the ELF at `path`, or None if it is static."""
    return _read(path)[0]


def _find(name: str, directories: tuple[str, ...], wanted_by: str) -> RuntimeFile:
    for directory in directories:
        candidate = Path(directory) / name
        if candidate.is_file():
            return RuntimeFile(str(PurePosixPath(directory) / name), candidate.resolve())
    raise ImageError(
        f"{wanted_by} needs {name}, which is not in {', '.join(directories)}",
        hint="install the library on the host, or link the workload with -static",
    )


def runtime_files(binary: Path) -> tuple[RuntimeFile, ...]:
    """The interpreter and every library `binary` loads, transitively; empty if it is static.

    Raises ImageError naming a library the host does not have.
    """
    interpreter, needed, search = _read(binary)
    if interpreter is None:
        return ()
    host_interpreter = Path(interpreter)
    if not host_interpreter.is_file():
        raise ImageError(
            f"{binary.name} asks for the interpreter {interpreter}, which the host lacks",
            hint="build the workload on this machine, or link it with -static",
        )
    found: dict[str, RuntimeFile] = {
        interpreter: RuntimeFile(interpreter, host_interpreter.resolve())
    }
    pending = [(name, search, binary.name) for name in needed]
    seen: set[str] = set()
    while pending:
        name, directories, wanted_by = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        library = _find(name, (*directories, *LIBRARY_DIRS), wanted_by)
        found.setdefault(library.guest_path, library)
        _, more, more_search = _read(library.host_path)
        pending.extend((other, more_search, name) for other in more)
    return tuple(sorted(found.values(), key=lambda f: f.guest_path))
