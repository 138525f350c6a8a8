"""Classic speculative sampling with a standalone small LM that shares the target's tokenizer.

The draft LM runs on the same `CausalLM` adapter as the target (slot KV cache, ragged batches), so one
forward drafts the next token for every session of the batch. Its cache keeps the drafts it processed
last round; on the next call it is cut back to the longest prefix that was actually committed.
"""

from __future__ import annotations

import numpy as np
import torch

from specserve.decoding.rng import Stream, uniforms
from specserve.decoding.sampling import logits_to_probs, sample_from
from specserve.drafters.base import DraftBlock, DraftRequest
from specserve.drafters.session_tokens import SessionTokens
from specserve.target.model import CausalLM


class DraftModelDrafter:
    """Autoregressive drafting with a small causal LM; q is the exact processed draft distribution."""

    target_layer_ids: tuple[int, ...] = ()

    def __init__(self, model: CausalLM, max_block: int = 4):
        if max_block < 1:
            raise ValueError(f"max_block must be >= 1, got {max_block}")
        self.model = model
        self._max_block = max_block
        self._sessions = SessionTokens()
        self._cached: dict[str, list[int]] = {}  # the tokens currently in the draft KV cache

    @property
    def max_block(self) -> int:
        return self._max_block

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def open(self, session, token_ids, taps=None) -> None:
        self._sessions.open(session, token_ids)
        self.model.open(session)
        self._cached[session] = []

    def close(self, session) -> None:
        self._sessions.close(session)
        if session in self._cached:
            self.model.close(session)
            del self._cached[session]

    def propose(self, batch: list[DraftRequest]) -> list[DraftBlock]:
        todo = []
        for item in batch:
            tokens = self._sessions.commit(item.session, item.new_ids, item.committed_len)
            if min(item.max_tokens, self._max_block) > 0:
                todo.append((item, tokens))
        drafts: dict[str, list[int]] = {item.session: [] for item in batch}
        dists: dict[str, list[torch.Tensor]] = {item.session: [] for item in batch}
        feed = {item.session: self._rollback(item.session, tokens) for item, tokens in todo}
        active = [item for item, _ in todo]
        step = 0
        while active:
            sessions = [i.session for i in active]
            logits = self.model.forward(sessions, [feed[s] for s in sessions], last_only=True).logits
            for s in sessions:
                self._cached[s].extend(feed[s])
            params = [i.sampling for i in active]
            probs = logits_to_probs(logits, params)
            u = uniforms([p.seed for p in params], Stream.DRAFT, [i.position for i in active], step + 1)[:, step]
            ids = sample_from(probs, u).tolist()
            for r, item in enumerate(active):
                drafts[item.session].append(ids[r])
                dists[item.session].append(probs[r])
                feed[item.session] = [ids[r]]
            step += 1
            active = [i for i in active if len(drafts[i.session]) < min(i.max_tokens, self._max_block)]
        return [DraftBlock(ids=drafts[i.session],
                           q=None if i.sampling.greedy or not dists[i.session] else torch.stack(dists[i.session]))
                for i in batch]

    def _rollback(self, session: str, tokens: list[int]) -> list[int]:
        """Cut the draft cache to the committed prefix it shares; return the tokens still to feed."""
        cached = self._cached[session]
        limit = min(len(cached), len(tokens) - 1)  # the newest token must be fed to get its logits
        differ = np.flatnonzero(np.asarray(cached[:limit]) != np.asarray(tokens[:limit]))
        keep = int(differ[0]) if differ.size else limit
        del cached[keep:]
        self.model.truncate(session, keep)
        return tokens[keep:]
