"""The Drafter protocol: what the engine asks of every draft source (n-gram, small LM, DSpark, Eagle3).

A drafter owns per-session state (its own KV cache, token history, target features) keyed by a
session id. The engine holds the truth (prompt, committed tokens); every `propose` call carries what
was committed since the previous call and the resulting `committed_len`, so a drafter rolls back by
truncating to `committed_len - len(new_ids)` and appending. Commit is folded into `propose` because a
DSpark drafter consumes the new target features in the same forward pass that drafts the next block.

Target features ("taps") are aligned with the target's processing: the target has processed every
committed token except the newest one (the anchor), so a session with `n` committed tokens has taps
for positions `0 .. n-2`. `open` gets taps for `token_ids[:-1]`; each `DraftRequest.new_taps` covers
the positions newly processed by the target in the last verification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from specserve.decoding.sampling import SamplingParams


@dataclass
class DraftRequest:
    """One session's share of a batched `propose` call."""

    session: str
    new_ids: list[int]  # tokens committed since the previous call (never empty after a verification)
    committed_len: int  # committed tokens (prompt + output) including new_ids
    max_tokens: int  # propose at most this many tokens (the engine's budget cap)
    sampling: SamplingParams
    position: int  # output index of the first token to propose; keys the counter-based RNG
    new_taps: torch.Tensor | None = None  # [n_new_processed, m*H]; None for drafters without taps


@dataclass
class DraftBlock:
    """Proposed tokens for one session.

    `q[j]` is the (temperature/top-k/top-p processed) distribution `ids[j]` was sampled from; None means
    the drafter proposed deterministically and verification treats `q` as one-hot. `confidence[j]` is the
    drafter's estimate that slot `j` is accepted given all earlier slots were (None when it has none).
    """

    ids: list[int]
    q: torch.Tensor | None = None  # [len(ids), V]
    confidence: torch.Tensor | None = None  # [len(ids)]
    error: str | None = field(default=None)  # per-item failure: the engine drafts nothing this round


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft tokens for a batch of sessions."""

    @property
    def target_layer_ids(self) -> tuple[int, ...]:
        """Target decoder layers whose outputs this drafter reads; () for drafters without taps."""
        ...

    @property
    def max_block(self) -> int:
        """The most tokens one `propose` returns per session (γ)."""
        ...

    @property
    def vocab_size(self) -> int | None:
        """Vocabulary size the drafter's ids live in; None when it works on the target's ids directly."""
        ...

    def open(self, session: str, token_ids: list[int], taps: torch.Tensor | None) -> None:
        """Start a session from its committed tokens (prompt + first token) and taps of `token_ids[:-1]`."""
        ...

    def propose(self, batch: list[DraftRequest]) -> list[DraftBlock]:
        """Commit each request's new tokens, then draft up to `max_tokens` tokens for it."""
        ...

    def close(self, session: str) -> None:
        """Drop a session's state. Closing an unknown session is a no-op."""
        ...
