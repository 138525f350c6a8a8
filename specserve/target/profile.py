"""SPS(B) profiling: how many target forward steps per second the hardware sustains with B tokens per forward.

The hardware-aware prefix scheduler (decoding/budget.py, algorithms.md §7) trades verified tokens for
forward speed, so it needs this curve for the machine the target runs on. A forward of B tokens is laid
out the way verification lays it out: sessions of `context` cached tokens each appending
`tokens_per_session` tokens (the anchor plus drafts), the last one fewer, with the chosen taps captured
and logits for every position. Every session is truncated back after each forward, so every size sees
the same cache lengths.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from specserve.target.model import CausalLM

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)


def profile_sps(target: CausalLM, sizes: Sequence[int] = DEFAULT_SIZES, context: int = 128,
                tokens_per_session: int = 4, repeats: int = 5, taps: Sequence[int] = ()) -> dict[int, float]:
    """Return {B: forward steps per second} for each B in `sizes`, from the fastest of `repeats` timed forwards.

    Another process taking a core only ever adds time, so the fastest run is the estimate of what the
    hardware sustains. A forward over more tokens is never faster in expectation, so the times are then
    made non-decreasing in B (`monotone_times`): one slow outlier is lowered to its larger neighbour's
    time instead of capping every larger B. Scratch sessions are closed before returning.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive token counts, got {list(sizes)}")
    if repeats < 1 or tokens_per_session < 1:
        raise ValueError(f"repeats and tokens_per_session must be >= 1, got {repeats}, {tokens_per_session}")
    context = max(1, min(context, target.max_context - tokens_per_session))
    rows = math.ceil(max(sizes) / tokens_per_session)
    sessions = [f"__specserve_sps_{i}__" for i in range(rows)]
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, target.vocab_size, (rows, context), generator=gen).tolist()
    for s in sessions:
        target.open(s)
    try:
        target.forward(sessions, prefix, last_only=True)
        table = {}
        for b in sorted(set(sizes)):
            counts = _split(b, tokens_per_session)
            batch = sessions[: len(counts)]
            tokens = [prefix[i][:n] for i, n in enumerate(counts)]
            timings = [_timed_forward(target, batch, tokens, taps, context) for _ in range(repeats + 1)][1:]
            table[b] = min(timings)  # the first run warms up allocations
    finally:
        for s in sessions:
            target.close(s)
    return {b: 1.0 / t for b, t in monotone_times(table).items()}


def profile_plain(target: CausalLM, max_sessions: int, context: int = 128, repeats: int = 5,
                  taps: Sequence[int] = ()) -> dict[int, float]:
    """SPS(B) for plain rounds: B = 1, 2, 4, ... up to `max_sessions` sessions appending one token each.

    A verify lays its tokens out in few sessions of several tokens, a plain round in as many sessions as tokens,
    each attending over its own cache: on the demo model 8 sessions of one token take 13.3 ms where one session of 8
    takes 11.8, and 32 take 23.1 ms where 4 sessions of 8 take 19.0. Priced from the verify's table, a plain round's
    remainder grew with the requests (3 ms at 1, 8 at 32), and a line through it priced 8 requests 7 % too slow.
    """
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
    sizes = [1 << i for i in range(max_sessions.bit_length())] + [max_sessions]
    return profile_sps(target, sizes, context, tokens_per_session=1, repeats=repeats, taps=taps)


def monotone_times(times: dict[int, float]) -> dict[int, float]:
    """Forward times made non-decreasing in B the way noise allows: noise only ever adds time, so a B
    measured slower than a larger B is lowered to that larger B's time (a suffix minimum)."""
    fitted, best = {}, math.inf
    for b in sorted(times, reverse=True):
        best = fitted[b] = min(best, times[b])
    return dict(sorted(fitted.items()))


def _split(tokens: int, per_session: int) -> list[int]:
    full, rest = divmod(tokens, per_session)
    return [per_session] * full + ([rest] if rest else [])


def _timed_forward(target: CausalLM, sessions: list[str], tokens: list[list[int]], taps, context: int) -> float:
    start = time.perf_counter()
    target.forward(sessions, tokens, taps=taps)
    if target.device.type == "cuda":
        torch.cuda.synchronize(target.device)
    elapsed = time.perf_counter() - start
    for s in sessions:
        target.truncate(s, context)
    return max(elapsed, 1e-9)
