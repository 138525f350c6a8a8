"""The `Drafter` for Eagle3 checkpoints: one token per forward, up to `ttt_length` per round.

A session's cache holds one slot per committed position but the newest token's (tap p paired with
token p+1), and its rolling hidden is the output of the newest committed slot. Drafting appends
speculative slots; the next `propose` truncates them away, then re-extends the cache with the target
features of what was actually committed (never the draft's own hidden states), in one batched forward.
"""

from __future__ import annotations

import torch

from specserve.cpu_linear import use_cpu_linears
from specserve.drafters.base import DraftBlock, DraftRequest
from specserve.drafters.eagle3 import Eagle3Model
from specserve.drafters.tap_session import BatchSampler, SessionStore, TapSession
from specserve.errors import SessionError


class Eagle3Drafter:
    """Autoregressive drafting with an Eagle3 model (the `Drafter` protocol)."""

    def __init__(self, model: Eagle3Model, cpu_linears: bool = True):
        self.model = model.eval()
        if cpu_linears:  # fp32 CPU: few-row products as (W · xᵀ)ᵀ, see specserve.cpu_linear
            use_cpu_linears(model)
        cfg = model.cfg
        weight = model.fc.weight
        self._sessions = SessionStore(1, cfg.num_taps * cfg.hidden_size, weight.device, weight.dtype)

    @property
    def target_layer_ids(self) -> tuple[int, ...]:
        return self.model.cfg.target_layer_ids

    @property
    def max_block(self) -> int:
        return self.model.cfg.ttt_length

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    def open(self, session: str, token_ids: list[int], taps: torch.Tensor | None) -> None:
        state = self._sessions.open(session, token_ids, taps)
        state.extra.update(slots=0, hidden=None)  # committed slots, output of the newest one

    def close(self, session: str) -> None:
        self._sessions.close(session)

    def propose(self, batch: list[DraftRequest]) -> list[DraftBlock]:
        blocks: list[DraftBlock | None] = [None] * len(batch)
        states: dict[int, TapSession] = {}
        extend: list[tuple[int, list[int]]] = []
        for i, item in enumerate(batch):
            try:
                if item.session in self._sessions:  # drop last round's speculative slots first
                    state = self._sessions.get(item.session)
                    state.cache.truncate(state.extra["slots"])
                state, tokens = self._sessions.commit(item)
            except SessionError as exc:
                blocks[i] = DraftBlock(ids=[], error=str(exc))
                continue
            states[i] = state
            if state.pending.shape[0]:
                start = state.cache.length
                extend.append((i, tokens[start + 1 : start + 1 + state.pending.shape[0]]))
            elif state.extra["hidden"] is None or state.cache.length != state.extra["slots"]:
                # the newest committed slot's output is gone (rolled back with no taps to rebuild it)
                blocks[i] = DraftBlock(ids=[], error=f"session {item.session!r}: no target features for the "
                                                     f"newest committed token to draft from")
        if extend:
            rows = [i for i, _ in extend]
            hidden = self.model.extend([states[i].cache for i in rows], [states[i].pending for i in rows],
                                       [ids for _, ids in extend])
            for r, i in enumerate(rows):
                states[i].pending = states[i].pending[:0]
                states[i].extra.update(slots=states[i].cache.length, hidden=hidden[r])
        todo = [i for i in states if blocks[i] is None]
        drafts = self._draft([batch[i] for i in todo], [states[i] for i in todo])
        for i, block in zip(todo, drafts, strict=True):
            blocks[i] = block
        return blocks

    def _draft(self, requests: list[DraftRequest], states: list[TapSession]) -> list[DraftBlock]:
        """Sample token by token; every session stops at its own budget or after a stop token."""
        budgets = [min(r.max_tokens, self.max_block) for r in requests]
        ids: list[list[int]] = [[] for _ in requests]
        probs: list[list[torch.Tensor]] = [[] for _ in requests]
        if not requests:
            return []
        sampler = BatchSampler(requests, max(budgets))
        g = torch.stack([s.extra["hidden"] for s in states])
        active = [r for r, n in enumerate(budgets) if n > 0]
        for slot in range(max(budgets)):
            if not active:
                break
            token, q = sampler.rows(active)(self.model.logits(g[active]), slot)
            for row, (r, t) in enumerate(zip(active, token.tolist(), strict=True)):
                ids[r].append(t)
                if q is not None:  # None: every row is greedy
                    probs[r].append(q[row])
            going = [row for row, r in enumerate(active)
                     if len(ids[r]) < budgets[r] and ids[r][-1] not in requests[r].sampling.stop_token_ids]
            if going:
                rows = [active[row] for row in going]
                g[rows] = self.model.step([states[r].cache for r in rows], g[rows], token[going])
            active = [active[row] for row in going]
        return [DraftBlock(ids=ids[r], q=None if requests[r].sampling.greedy or not probs[r] else torch.stack(probs[r]))
                for r in range(len(requests))]
