"""Starting QEMU so that it can never outlive vmfault.

The child asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so even a
`kill -9` of vmfault takes QEMU with it. It runs in its own process group, so a Ctrl-C in
the terminal reaches vmfault only, which then shuts QEMU down in order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["spawn_tied"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _tie_to_parent(parent_pid: int) -> None:
    # Runs in the child between fork and exec: only async-signal-safe work here.
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(126)


def spawn_tied(
    argv: Sequence[str], *, output: Path, pipes: bool = False, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output appended to `output`.

    Without `pipes`, stdin is closed and stdout and stderr go to `output`; with `pipes`,
    stdin and stdout are pipes to the caller and only stderr goes to `output`. The file
    descriptors in `pass_fds` are inherited under the same numbers (every other is closed).
    Guarantees: the process is killed when the calling thread's process dies, and it does
    not receive the terminal's SIGINT. Note that PDEATHSIG follows the *thread* that forks:
    call this from a thread that lives as long as the child.
    """
    parent = os.getpid()
    with output.open("ab") as sink:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else sink,
            stderr=sink,
            process_group=0,
            preexec_fn=lambda: _tie_to_parent(parent),  # noqa: PLW1509
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
