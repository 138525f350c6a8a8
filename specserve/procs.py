"""Child processes that die with their parent (Linux), so a lost supervisor never leaves work running.

`python -m specserve.procs PID COMMAND [ARGS...]` asks the kernel to SIGKILL it when its parent exits,
checks that the parent is still PID (it may have died before the request took effect), then execs COMMAND:
the request survives the exec. The trainer service starts every job this way (not with a `preexec_fn`,
which runs between fork and exec in a process that has other threads). A training started by torchrun
sees `SPECSERVE_DIE_WITH_PARENT=1` and makes the same request in each rank, since torchrun starts its
ranks in sessions of their own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
ENV = "SPECSERVE_DIE_WITH_PARENT"


def die_with_parent(parent: int | None = None) -> bool:
    """SIGKILL this process when its parent exits; exit at once if the parent (`parent`, default the current
    one) is already gone. False where the kernel has no such request (not Linux)."""
    parent = os.getppid() if parent is None else parent
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)
    return True


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m specserve.procs PARENT_PID COMMAND [ARGS...]")
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
