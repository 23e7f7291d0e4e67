"""The guest kernel's symbols, captured once per kernel, and images ready to run experiments."""

from __future__ import annotations

from collections.abc import Callable

from vmfault.errors import ImageError
from vmfault.files import cached_bytes
from vmfault.guest.image import GuestImage, ImageSpec, build_image
from vmfault.guest.protocol import AgentMode, FrameKind
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Machine
from vmfault.session.guest import machine_config

__all__ = ["capture_kernel_symbols", "prepare_image"]


def capture_kernel_symbols(image: GuestImage, *, timeout_s: float = 120.0) -> KernelSymbols:
    """The kernel's symbols: /proc/kallsyms of one boot in kallsyms mode, kept beside the
    image and, for other images of the same kernel, beside the images (atomically).

    Later calls read the file without booting.
    """
    shared = image.root.parent.parent / "kallsyms" / image.symbols_key

    def capture() -> bytes:
        with Machine(machine_config(image, mode=AgentMode.KALLSYMS), name="kallsyms") as vm:
            if vm.channel.wait(FrameKind.EXIT, timeout_s=timeout_s) is None:
                raise ImageError(
                    "the guest did not list its kernel symbols",
                    hint=f"see the console: {vm.console.transcript()[-300:]!r}",
                )
            frames = vm.channel.frames
            return b"".join(f.payload for f in frames if f.kind == FrameKind.KALLSYMS)

    text = cached_bytes(image.kallsyms_path, lambda: cached_bytes(shared, capture))
    offset = image.arch.platform.kernel_image_offset
    return KernelSymbols.parse(text.decode("ascii", errors="replace"), image_offset=offset)


def prepare_image(
    spec: ImageSpec | None = None, *, log: Callable[[str], None] | None = None
) -> GuestImage:
    """Build (or find in the cache) the image for `spec`, with its kernel symbols captured."""
    image = build_image(spec or ImageSpec(), log=log)
    if not image.kallsyms_path.exists():
        if log is not None:
            log("capturing kernel symbols (one boot)")
        capture_kernel_symbols(image)
    return image
