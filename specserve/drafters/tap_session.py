"""Per-session state shared by the tap-reading drafters (DSpark/DFlash, Eagle3) and their sampler.

A session holds its committed tokens (`SessionTokens`), a draft K/V cache indexed by position, and
the taps the target has produced that are not in the cache yet. Taps at position p depend only on tokens 0..p, so a
rollback to `base` committed tokens keeps every tap before `base`; the `new_taps` of a `DraftRequest`
always end at position `committed_len - 2` (the target has processed every committed token but the
newest), which fixes where they start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specserve.decoding.rng import Stream, uniforms
from specserve.decoding.sampling import SamplingParams, logits_to_probs, sample_from
from specserve.drafters.base import DraftRequest
from specserve.drafters.draft_kv_cache import DraftKVCache
from specserve.drafters.session_tokens import SessionTokens
from specserve.errors import SessionError


@dataclass
class TapSession:
    """One session's draft cache (`cache.length` positions) and the pending taps right after it."""

    cache: DraftKVCache
    pending: torch.Tensor  # [n, m*H] taps of positions cache.length .. cache.length + n - 1
    extra: dict = field(default_factory=dict)  # drafter-specific state (Eagle3's rolling hidden ...)

    @property
    def taps_len(self) -> int:
        return self.cache.length + self.pending.shape[0]

    def add_taps(self, item: DraftRequest) -> None:
        """Drop taps the rollback invalidated and append the request's new ones (ending at committed_len - 2)."""
        base = item.committed_len - len(item.new_ids)
        new_taps = item.new_taps if item.new_taps is not None else self.pending[:0]
        start = item.committed_len - 1 - new_taps.shape[0]  # position of the first new tap
        if not 0 <= start <= min(self.taps_len, base):
            raise SessionError(f"session {item.session!r}: {new_taps.shape[0]} new taps start at position {start}, "
                               f"but taps are known up to position {self.taps_len - 1} (committed_len "
                               f"{item.committed_len}, {len(item.new_ids)} new tokens)")
        if start < self.cache.length:
            self.cache.truncate(start)
        kept = self.pending[: start - self.cache.length]
        self.pending = torch.cat([kept, new_taps.to(kept.device, kept.dtype)]) if new_taps.shape[0] else kept


class SessionStore:
    """The open sessions of one drafter."""

    def __init__(self, num_layers: int, tap_width: int, device: torch.device, dtype: torch.dtype):
        self.num_layers, self.tap_width, self.device, self.dtype = num_layers, tap_width, device, dtype
        self._sessions: dict[str, TapSession] = {}
        self.tokens = SessionTokens()

    def open(self, session: str, token_ids: list[int], taps: torch.Tensor | None) -> TapSession:
        if session in self._sessions:
            raise SessionError(f"session {session!r} is already open")
        if len(token_ids) < 1:
            raise SessionError(f"session {session!r}: open needs at least one token")
        if taps is None or tuple(taps.shape) != (len(token_ids) - 1, self.tap_width):
            shape = None if taps is None else tuple(taps.shape)
            raise SessionError(f"session {session!r}: taps must have shape {(len(token_ids) - 1, self.tap_width)} "
                               f"(one row per token but the newest), got {shape}")
        state = TapSession(DraftKVCache(self.num_layers), taps.to(self.device, self.dtype))
        self.tokens.open(session, token_ids)
        self._sessions[session] = state
        return state

    def commit(self, item: DraftRequest) -> tuple[TapSession, list[int]]:
        """Apply a request's rollback and new tokens/taps; returns the session and its committed tokens."""
        tokens = self.tokens.commit(item.session, item.new_ids, item.committed_len)
        state = self.get(item.session)
        state.add_taps(item)
        return state, tokens

    def get(self, session: str) -> TapSession:
        try:
            return self._sessions[session]
        except KeyError:
            raise SessionError(f"unknown session {session!r}") from None

    def close(self, session: str) -> None:
        self._sessions.pop(session, None)
        self.tokens.close(session)

    def __contains__(self, session: str) -> bool:
        return session in self._sessions


class BatchSampler:
    """Samples slot j of a batch with each row's own SamplingParams and counter-based uniforms.

    `q` is `logits_to_probs` of exactly the logits the token was drawn from, so rejection sampling
    sees the drafter's true proposal distribution. Greedy rows reduce to the argmax; a batch of greedy
    rows only takes the argmax and returns no `q` (a greedy draft's q is one-hot, which the engine
    assumes when a `DraftBlock` carries none).
    """

    def __init__(self, requests: list[DraftRequest], width: int):
        self.params: list[SamplingParams] = [r.sampling for r in requests]
        seeds = [p.seed if p.seed is not None else 0 for p in self.params]
        self.u = uniforms(seeds, Stream.DRAFT, [r.position for r in requests], max(width, 1))

    @property
    def greedy(self) -> bool:
        return all(p.greedy for p in self.params)

    def rows(self, index: list[int]) -> BatchSampler:
        """The sampler of a sub-batch (Eagle3 drops sessions that have drafted enough)."""
        sub = object.__new__(BatchSampler)
        sub.params, sub.u = [self.params[i] for i in index], self.u[index]
        return sub

    def __call__(self, logits: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row i of logits [B, V] -> (ids [B] on the logits' device, q [B, V] float32 on the CPU or None).

        The shared sampling functions build their tensors on the CPU and the verifier reads q there.
        """
        if self.greedy:
            return logits.argmax(-1), None  # first index on ties, as logits_to_probs' one-hot
        probs = logits_to_probs(logits.float().cpu(), self.params)
        ids = sample_from(probs, self.u[:, slot])
        return ids.to(logits.device), probs
