"""Prompt-lookup drafting: propose the tokens that followed the latest earlier occurrence of the
current suffix (Saxena 2023; HF `prompt_lookup_num_tokens`). No model, no taps, deterministic drafts.
"""

from __future__ import annotations

import numpy as np

from specserve.drafters.base import DraftBlock, DraftRequest
from specserve.drafters.session_tokens import SessionTokens


class NgramDrafter:
    """Matches the last `max_ngram` .. `min_ngram` tokens against the session's history."""

    def __init__(self, max_block: int = 8, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if max_block < 1:
            raise ValueError(f"max_block must be >= 1, got {max_block}")
        self._max_block = max_block
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._sessions = SessionTokens()

    target_layer_ids: tuple[int, ...] = ()
    vocab_size = None

    @property
    def max_block(self) -> int:
        return self._max_block

    def open(self, session, token_ids, taps=None) -> None:
        self._sessions.open(session, token_ids)

    def close(self, session) -> None:
        self._sessions.close(session)

    def propose(self, batch: list[DraftRequest]) -> list[DraftBlock]:
        blocks = []
        for item in batch:
            tokens = self._sessions.commit(item.session, item.new_ids, item.committed_len)
            k = min(item.max_tokens, self._max_block)
            blocks.append(DraftBlock(ids=self._lookup(tokens, k) if k > 0 else []))
        return blocks

    def _lookup(self, tokens: list[int], k: int) -> list[int]:
        seq = np.asarray(tokens)
        n = len(seq)
        for size in range(min(self.max_ngram, n - 1), self.min_ngram - 1, -1):
            suffix = seq[n - size:]
            windows = np.lib.stride_tricks.sliding_window_view(seq[: n - 1], size)
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + size  # the most recent earlier occurrence
                return seq[start: start + k].tolist()
        return []
