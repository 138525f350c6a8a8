"""Test doubles around the engine's taps: a prompt-lookup drafter that reads taps (and checks and keeps every row it
receives), and round costs whose choice of drafting requests follows a script."""

from __future__ import annotations

import itertools

import torch

from specserve.drafters.base import DraftBlock
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.round_costs import RoundCosts


class TapCheckingDrafter(NgramDrafter):
    """Prompt lookup that reads taps of layer 1, keeps every row it receives per session (`received`), and refuses a
    round whose taps do not line up with the tokens (the engine then drops its drafter)."""

    target_layer_ids = (1,)

    def __init__(self, width: int = 64):
        super().__init__(max_block=4)
        self.width = width
        self.received: dict[str, list[torch.Tensor]] = {}
        self.checked = 0

    def open(self, session, token_ids, taps=None):
        assert taps is not None and taps.shape == (len(token_ids) - 1, self.width), taps
        self.received[session] = [taps]
        super().open(session, token_ids)

    def propose(self, batch):
        blocks = super().propose(batch)
        for i, item in enumerate(batch):
            if item.new_taps is not None:
                self.received[item.session].append(item.new_taps)
            rows = self.rows(item.session)
            if rows != item.committed_len - 1:  # every committed position but the newest, processed by the target
                blocks[i] = DraftBlock(ids=[], error=f"{rows} tap rows for {item.committed_len} tokens")
            self.checked += 1
        return blocks

    def rows(self, session: str) -> int:
        return sum(t.shape[0] for t in self.received[session])

    def taps(self, session: str) -> torch.Tensor:
        return torch.cat(self.received[session])


class ScriptedCosts(RoundCosts):
    """Round costs whose `drafting_requests` follows `script` (cycled): how many of a round's requests draft, -1 for
    all. A deterministic stand-in for the measured choice, so a test can make requests switch between drafting and
    plain decoding (and probes of a few) on the rounds it names."""

    def __init__(self, script):
        super().__init__()
        self.script = itertools.cycle(script)

    def drafting_requests(self, sps, requests, cap=0, plain_sps=None) -> int:
        n = next(self.script)
        return requests if n < 0 else min(n, requests)
