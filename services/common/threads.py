"""How many torch intra-op threads a service's models use."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


def set_torch_threads(requested: int | None, reserve: int = 0, service: str = "service") -> int:
    """Use `requested` threads, or when None every usable core but `reserve` (at least one); returns the count.

    Torch keeps the setting process-wide; the engine's own thread picks it up on its first parallel op.
    """
    threads = requested or max(1, usable_cores() - reserve)
    torch.set_num_threads(threads)
    log.info("%s: %d torch threads (%s)", service, threads,
             "requested" if requested else f"{usable_cores()} usable cores, {reserve} left to the event loop")
    return threads
