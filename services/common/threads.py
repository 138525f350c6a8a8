"""How many torch intra-op threads a service's models use."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1. A CPU quota (`docker --cpus`, a
    Kubernetes limit) does not narrow the affinity: set `threads` (or OMP_NUM_THREADS) there."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


def set_torch_threads(requested: int | None, reserve: int = 0, service: str = "service") -> int:
    """Use `requested` threads; when None, OMP_NUM_THREADS if set (torch already follows it), else every
    usable core but `reserve` (at least one). Returns the count.

    Torch keeps the setting process-wide; the engine's own thread picks it up on its first parallel op.
    """
    if requested:
        threads, why = requested, "requested"
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        threads, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        threads = max(1, usable_cores() - reserve)
        why = f"{usable_cores()} usable cores, {reserve} left to the event loop"
    torch.set_num_threads(threads)
    log.info("%s: %d torch threads (%s)", service, threads, why)
    return threads
