"""Counter-based random numbers keyed by (seed, stream, round start, offset).

Every random draw of a request is a pure function of its seed and of where it happens, so a retried
round, a failover to another verifier replica, or a replay reproduces the same tokens. The key holds
the output position where the round starts and the offset inside the round, so every round gets fresh
numbers even when it revisits positions a rejected draft already used.

The generator is SplitMix64's finaliser applied to a chained key: cheap, vectorised in numpy, and
statistically strong enough for sampling (it passes BigCrush as a counter-mode generator).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


class Stream(IntEnum):
    """Independent uses of randomness inside one round."""

    DRAFT = 1  # the drafter sampling its proposal
    ACCEPT = 2  # the accept/reject test of a draft token
    SAMPLE = 3  # the target sampling a replacement or bonus token


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniforms(seeds, stream: Stream, starts, width: int) -> torch.Tensor:
    """Uniforms in [0, 1) of shape [R, width]: row r, column j is keyed by (seeds[r], stream, starts[r], j).

    `seeds` and `starts` are sequences of R non-negative ints; float64 keeps 53 random bits.
    """
    with np.errstate(over="ignore"):
        seed = np.asarray([s & _MASK64 for s in seeds], dtype=np.uint64)[:, None]
        start = np.asarray(starts, dtype=np.uint64)[:, None]
        offset = np.arange(width, dtype=np.uint64)[None, :]
        key = _mix(seed * _GOLDEN + np.uint64(int(stream)))
        key = _mix(key + start * _GOLDEN)
        bits = _mix(key + offset * _GOLDEN + _GOLDEN)
    return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))
