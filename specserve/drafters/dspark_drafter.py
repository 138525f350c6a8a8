"""The `Drafter` for DSpark and DFlash checkpoints: one batched backbone pass per round.

Each `propose` commits the new tokens and taps of every session and drafts its next block in the
same forward (the taps are appended to the session's context cache while the block attends to them).
Slots are sampled left to right with the request's own sampling parameters, so `q` is the exact
processed distribution of each draft, and the confidence head's `c_j` rides along for the budget policy,
rescaled by the draft's Sequential Temperature Scaling temperatures when it was calibrated (`eval.sts`).

A DSpark session drafting k < γ tokens runs only those k slots through the backbone (`full_block` None or
False; each session its own k, so its drafts do not depend on its batch mates). Under load the budgets are one
to three tokens, and the full block made a DSpark round at 32 requests, one token each, cost more than a
target step on a CPU (24 ms vs 22; trimmed 14 ms). The drafts of a shorter block differ slightly (its slots
see fewer mask slots after them), and DSpark's sequential head absorbs it: demo model, temperature 1, 128
tokens, τ full vs trimmed, 2 tokens per round: python-heldout 2.08 vs 2.02, mt-bench 2.16 vs 2.09; 3 tokens:
2.20 vs 2.31, 2.45 vs 2.35 (30 prompts each; greedy, 20 prompts, 4 tokens: 3.41 vs 3.45). DFlash, whose slots
are drafted independently, loses more (2 tokens: 1.87 vs 1.74; 4: 1.97 vs 1.88), so by default it keeps the
full block; `full_block=True` keeps DeepSpec's rollout for every draft and k. The STS temperatures were fitted
on full blocks; a trimmed block's confidences shift slightly with it (they steer budgets only, never what is
accepted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specserve.cpu_linear import use_cpu_linears
from specserve.drafters.base import DraftBlock, DraftRequest
from specserve.drafters.dspark import BlockInput, DSparkModel
from specserve.drafters.tap_session import BatchSampler, SessionStore
from specserve.errors import SessionError
from specserve.eval.calibration import apply_temperatures


class DSparkDrafter:
    """Drafts up to γ = block_size tokens per round with a DSpark/DFlash model (the `Drafter` protocol)."""

    def __init__(self, model: DSparkModel, temperatures: Sequence[float] | None = None, cpu_linears: bool = True,
                 full_block: bool | None = None):
        self.model = model.eval()
        # None: trim the block to the drafted slots when a sequential head conditions each slot on the drafts
        self.full_block = model.markov_head is None if full_block is None else full_block
        if model.markov_head is not None:  # the sequential head reads W2 once per drafted slot
            model.markov_head.sampling_layout()
        if cpu_linears:  # fp32 CPU: few-row products as (W · xᵀ)ᵀ (skips the stored-transposed W2)
            use_cpu_linears(model)
        # STS temperature T_k of slot k (calibration.json); None = the raw head. Public so that a
        # calibration run can record raw confidences from a draft that is already calibrated.
        self.temperatures = tuple(float(t) for t in temperatures) if temperatures else None
        cfg = model.cfg
        weight = model.fc.weight
        self._sessions = SessionStore(cfg.num_layers, cfg.num_taps * cfg.hidden_size, weight.device, weight.dtype)

    @property
    def target_layer_ids(self) -> tuple[int, ...]:
        return self.model.cfg.target_layer_ids

    @property
    def max_block(self) -> int:
        return self.model.cfg.block_size

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    def open(self, session: str, token_ids: list[int], taps: torch.Tensor | None) -> None:
        self._sessions.open(session, token_ids, taps)

    def close(self, session: str) -> None:
        self._sessions.close(session)

    def propose(self, batch: list[DraftRequest]) -> list[DraftBlock]:
        blocks: list[DraftBlock | None] = [None] * len(batch)
        todo, inputs = [], []
        for i, item in enumerate(batch):
            try:
                state, tokens = self._sessions.commit(item)
            except SessionError as exc:
                blocks[i] = DraftBlock(ids=[], error=str(exc))
                continue
            if min(item.max_tokens, self.max_block) <= 0:
                blocks[i] = DraftBlock(ids=[])  # taps stay pending until a round drafts
                continue
            todo.append(i)
            inputs.append(BlockInput(state.cache, state.pending, tokens[-1]))
        if todo:
            requests = [batch[i] for i in todo]
            k = max(min(r.max_tokens, self.max_block) for r in requests)
            sampler = BatchSampler(requests, k)
            lens = None if self.full_block else [max(1, min(r.max_tokens, self.max_block)) for r in requests]
            out = self.model.draft_block(inputs, k, sampler, block_lens=lens)
            confidence = None if out.confidence is None else apply_temperatures(out.confidence.float().cpu(),
                                                                                self.temperatures)
            for row, (i, item, inp) in enumerate(zip(todo, requests, inputs, strict=True)):
                self._sessions.get(item.session).pending = inp.new_taps[:0]
                n = min(item.max_tokens, self.max_block)
                blocks[i] = DraftBlock(
                    ids=out.ids[row, :n].tolist(),
                    q=None if item.sampling.greedy else out.q[row, :n],
                    confidence=None if confidence is None else confidence[row, :n])
        return blocks
