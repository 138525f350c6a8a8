"""The Verifier interface and its in-process implementation around a target `CausalLM`.

The verifier owns the target KV cache. A session's cache holds every committed token but the newest
(`pending`, sampled by the verifier itself and not yet processed), so `committed_len == cache length
+ 1`; a call whose `committed_len` disagrees is stale and refused. One `verify` runs a single target
forward over `[pending, d_1..d_ℓ]` for every session of the batch, applies lossless rejection
sampling, and truncates each session's cache to its own accepted length.

Taps can be held back: a call with `defer_taps` keeps its taps in the verifier, and `take_taps` hands a
session's held taps over (in position order) when its drafter next runs. A request that decodes plainly
for a while (the prefix scheduler under load) then ships its taps once, not one position per round: over
gRPC, returning 8 sessions' taps every plain round made the round ~8 % slower (demo, 8 streams).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specserve.decoding.budget import LoadReport
from specserve.decoding.rejection import greedy_verify, rejection_sample
from specserve.decoding.rng import Stream, uniforms
from specserve.decoding.sampling import SamplingParams, logits_to_probs, sample_from
from specserve.errors import SessionError
from specserve.target.model import CausalLM


@dataclass
class OpenRequest:
    """Prefill a session. With `resume_token` (failover to another replica), `prompt_ids` are the prompt
    plus every committed token but the newest, which is given, not sampled."""

    session: str
    prompt_ids: list[int]
    sampling: SamplingParams  # seed already fixed by the engine
    resume_token: int | None = None
    want_taps: bool = True  # False: the caller never reads this session's taps (no drafter), so none are returned
    defer_taps: bool = False  # True (with want_taps): hold the prompt's taps for `take_taps` instead of returning them


@dataclass
class OpenResult:
    session: str
    token: int  # the first output token
    taps: torch.Tensor | None  # [len(prompt), m*H] target features of the prompt
    error: str | None = None  # this item failed (the others of the batch did not); token/taps are meaningless


@dataclass
class VerifyRequest:
    session: str
    committed_len: int  # prompt + output tokens committed so far (the caller's view)
    draft_ids: list[int]
    q: torch.Tensor | None  # [len(draft_ids), V] or None (deterministic drafts)
    sampling: SamplingParams
    position: int  # output index of the first draft token
    want_taps: bool = True  # False: the caller will not read this round's taps (the request never drafts)
    defer_taps: bool = False  # True (with want_taps): hold this round's taps for `take_taps` instead of returning them


@dataclass
class VerifyResult:
    session: str
    accepted: int  # accepted draft tokens
    tokens: list[int]  # accepted drafts + the replacement/bonus token (committed this round)
    taps: torch.Tensor | None  # [accepted + 1, m*H] features of the newly processed positions
    error: str | None = None  # this item failed (the others of the batch did not)


class Verifier(Protocol):
    """Runs the target: prefill on open, batched lossless verification, load reports."""

    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]

    def open(self, batch: list[OpenRequest]) -> list[OpenResult]: ...

    def verify(self, batch: list[VerifyRequest]) -> list[VerifyResult]: ...

    def take_taps(self, sessions: list[str]) -> list[torch.Tensor | None]:
        """The taps each session's deferred calls held back, oldest first, [n, m*H] (n may be 0), and released;
        None for a session this verifier does not hold (closed, or re-opened elsewhere: its held taps are lost)."""
        ...

    def close(self, session: str) -> None: ...

    def load(self) -> LoadReport: ...


class LocalVerifier:
    """In-process verifier: the target model in this process, taps at `tap_layers`."""

    def __init__(self, target: CausalLM, tap_layers: tuple[int, ...] = (), sps: dict[int, float] | None = None,
                 plain_sps: dict[int, float] | None = None):
        self.target = target
        self.tap_layers = tuple(tap_layers)
        self.vocab_size = target.vocab_size
        self.max_context = target.max_context
        self.eos_token_ids = target.eos_token_ids
        self._pending: dict[str, int] = {}
        self._held: dict[str, list[torch.Tensor]] = {}  # taps of deferred calls, per session, oldest first
        self._sps = sps or {}
        self._plain_sps = plain_sps or {}

    def open(self, batch: list[OpenRequest]) -> list[OpenResult]:
        opened = []
        try:
            for item in batch:
                self.target.open(item.session)
                opened.append(item.session)
            out = self.target.forward(opened, [i.prompt_ids for i in batch], taps=_taps_for(batch, self.tap_layers),
                                      last_only=True)
        except Exception:
            for session in opened:
                self.target.close(session)
            raise
        params = [i.sampling for i in batch]
        u = uniforms([p.seed for p in params], Stream.SAMPLE, [0] * len(batch), 1)[:, 0]
        tokens = sample_from(logits_to_probs(out.logits, params), u).tolist()
        tokens = [t if i.resume_token is None else i.resume_token for t, i in zip(tokens, batch, strict=True)]
        results = []
        for r, item in enumerate(batch):
            self._pending[item.session] = tokens[r]
            self._held[item.session] = []
            taps = out.taps[r, : len(item.prompt_ids)] if out.taps is not None and item.want_taps else None
            results.append(OpenResult(item.session, tokens[r], self._hold(item, taps)))
        return results

    def verify(self, batch: list[VerifyRequest]) -> list[VerifyResult]:
        for item in batch:
            expected = self.target.length(item.session) + 1
            if item.committed_len != expected:
                raise SessionError(f"session {item.session!r}: committed_len {item.committed_len} is stale "
                                   f"(the verifier holds {expected})")
        n_drafts = torch.tensor([len(i.draft_ids) for i in batch])
        width = int(n_drafts.max())
        draft_ids = torch.zeros(len(batch), width, dtype=torch.long)
        for r, item in enumerate(batch):
            draft_ids[r, : len(item.draft_ids)] = torch.as_tensor(item.draft_ids, dtype=torch.long)
        out = self.target.forward([i.session for i in batch],
                                  [[self._pending[i.session], *i.draft_ids] for i in batch],
                                  taps=_taps_for(batch, self.tap_layers))
        params = [i.sampling for i in batch]
        if all(p.greedy for p in params):
            result = greedy_verify(out.logits.argmax(-1), draft_ids, n_drafts)
        else:
            result = self._sample(out.logits, draft_ids, n_drafts, batch)
        accepted, next_token = result.accepted.tolist(), result.next_token.tolist()
        results = []
        for r, item in enumerate(batch):
            a = accepted[r]
            self.target.truncate(item.session, item.committed_len + a)
            self._pending[item.session] = next_token[r]
            taps = out.taps[r, : a + 1] if out.taps is not None and item.want_taps else None
            results.append(VerifyResult(item.session, a, [*item.draft_ids[:a], next_token[r]], self._hold(item, taps)))
        return results

    def _hold(self, item: OpenRequest | VerifyRequest, taps: torch.Tensor | None) -> torch.Tensor | None:
        """The taps to return for `item`: None where it defers them (they are held) or does not want them (a
        session whose drafter is gone: what it held is dropped)."""
        held = self._held[item.session]
        if not item.want_taps:
            held.clear()
        elif item.defer_taps and taps is not None:
            held.append(taps.to("cpu", copy=True))  # host memory, and not a view: the batch's taps are freed
            return None
        return taps

    def take_taps(self, sessions: list[str]) -> list[torch.Tensor | None]:
        out = []
        for session in sessions:
            held = self._held.get(session)
            if held is None:
                out.append(None)
                continue
            width = held[0].shape[-1] if held else self.target.hidden_size * len(self.tap_layers)
            out.append(torch.cat(held) if held else torch.empty(0, width, dtype=self.target.dtype))  # CPU, as held
            held.clear()
        return out

    def _sample(self, logits, draft_ids, n_drafts, batch):
        rows, width = logits.shape[0], logits.shape[1]
        params = [i.sampling for i in batch]
        p = logits_to_probs(logits.reshape(rows * width, -1), [p for p in params for _ in range(width)])
        p = p.reshape(rows, width, -1)
        q = None
        if any(i.q is not None for i in batch):
            # mixed batches: deterministic drafts become explicit one-hot rows
            q = torch.zeros(rows, width - 1, p.shape[-1])
            for r, item in enumerate(batch):
                k = len(item.draft_ids)
                if item.q is not None:
                    q[r, :k] = item.q.float()
                elif k:
                    q[r, torch.arange(k), draft_ids[r, :k]] = 1.0
        seeds, starts = [p.seed for p in params], [i.position for i in batch]
        u_accept = uniforms(seeds, Stream.ACCEPT, starts, max(width - 1, 0))
        u_sample = uniforms(seeds, Stream.SAMPLE, starts, width)
        return rejection_sample(p, draft_ids, n_drafts, q, u_accept, u_sample)

    def close(self, session: str) -> None:
        self._pending.pop(session, None)
        self._held.pop(session, None)
        self.target.close(session)

    def load(self) -> LoadReport:
        return LoadReport(sps=dict(self._sps), running=len(self.target.cache), padding_cost=self.target.padding_cost,
                          plain_sps=dict(self._plain_sps))


def _taps_for(batch: list[OpenRequest] | list[VerifyRequest], layers: tuple[int, ...]) -> tuple[int, ...]:
    """The layers to tap in a forward over `batch`: none when no item reads its taps."""
    return layers if any(item.want_taps for item in batch) else ()
