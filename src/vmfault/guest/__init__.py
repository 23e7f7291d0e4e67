"""Guest images: Debian's kernel, an initramfs with the vmfault agent as /init, and workloads.

`build_image` returns a `GuestImage`, cached by a hash of every input. The agent runs one
workload per boot, chosen with kernel parameters (`agent_params`, `encode_argv`), and
reports on the isa-debugcon port in frames whose kinds are `FrameKind`. Names resolve on
first use: reading `vmfault.guest.workloads` does not load the image builder.
"""

from typing import TYPE_CHECKING

from vmfault._lazy import lazy_attributes

if TYPE_CHECKING:
    from vmfault.guest.image import (
        GuestImage,
        ImageSpec,
        build_image,
        default_cache_root,
        load_image,
    )
    from vmfault.guest.protocol import (
        AfterRun,
        AgentMode,
        FrameKind,
        agent_params,
        decode_argv,
        encode_argv,
    )
    from vmfault.guest.workloads import (
        SourceKind,
        UserWorkload,
        Workload,
        builtin_workload_names,
    )

__all__ = [
    "AfterRun",
    "AgentMode",
    "FrameKind",
    "GuestImage",
    "ImageSpec",
    "SourceKind",
    "UserWorkload",
    "Workload",
    "agent_params",
    "build_image",
    "builtin_workload_names",
    "decode_argv",
    "default_cache_root",
    "encode_argv",
    "load_image",
]

_MODULES = {
    "vmfault.guest.image": ("GuestImage", "ImageSpec", "build_image", "default_cache_root",
                            "load_image"),
    "vmfault.guest.protocol": ("AfterRun", "AgentMode", "FrameKind", "agent_params",
                               "decode_argv", "encode_argv"),
    "vmfault.guest.workloads": ("SourceKind", "UserWorkload", "Workload",
                                "builtin_workload_names"),
}  # fmt: skip
__getattr__, __dir__ = lazy_attributes(
    __name__, {name: module for module, names in _MODULES.items() for name in names}
)
