"""Compiling C test programs with the toolchain vmfault requires: gcc and libc6-dev."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SETUP_HINT = "vmfault needs gcc and libc6-dev (static libc too): run `make setup`"


def compile_c(source: Path, target: Path, *flags: str, libraries: tuple[str, ...] = ()) -> Path:
    """Build `source` into `target` with gcc `flags`, linking `libraries` (such as "-lm").

    A missing gcc or a failed link fails the test: the project requires the toolchain, so
    it must never turn into a skip that hides a broken setup.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail(f"gcc is not installed; {SETUP_HINT}", pytrace=False)
    argv = [gcc, *flags, "-o", str(target), str(source), *libraries]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} failed ({SETUP_HINT}):\n{result.stderr[-2000:]}", pytrace=False
        )
    return target
