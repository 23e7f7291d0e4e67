"""Guest sessions: a machine booted from a vmfault image whose agent runs one workload.

`GuestSession` boots and halts at the workload's start (the agent's start hook) and runs
it to its exit hook; `vmfault.session.process` finds the workload process at its exec;
`vmfault.session.prepare` makes images ready to run: built, the kernel's symbols captured.
"""

from vmfault.session.guest import (
    AgentHooks,
    Finished,
    GuestSession,
    WorkloadResult,
    machine_config,
)
from vmfault.session.prepare import capture_kernel_symbols, prepare_image

__all__ = [
    "AgentHooks",
    "Finished",
    "GuestSession",
    "WorkloadResult",
    "capture_kernel_symbols",
    "machine_config",
    "prepare_image",
]
