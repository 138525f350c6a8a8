"""Helpers of the drafter tests: the DeepSpec reference fixtures and a greedy speculative loop."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftRequest

REFERENCE = Path(__file__).parents[2] / "fixtures" / "deepspec_tiny"
QWEN3_DSPARK = ["dspark_markov_vanilla", "dspark_markov_gated", "dspark_rnn", "dspark_conf_no_markov_feat", "dflash"]
TOLERANCE = 1e-5


def tensors(relative: str) -> dict[str, torch.Tensor]:
    return load_file(REFERENCE / relative)


def summary(relative: str) -> dict:
    return json.loads((REFERENCE / relative).read_text())


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != reference {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def greedy_rollout(drafter, target, prompt: list[int], max_new: int, stop_ids: tuple[int, ...]) -> dict:
    """Greedy speculative decoding with a full-recompute target, following DeepSpec's evaluator loop.

    Each round the drafter proposes up to `max_block` tokens; the target verifies them in one forward
    over all tokens so far; accepted drafts plus the target's next token are committed and their taps
    (hidden states of the newly processed positions) go back to the drafter with the next proposal.
    """
    layers = drafter.target_layer_ids

    def forward(tokens):
        out = target(torch.tensor([tokens]), output_hidden_states=True)
        return out.logits[0], torch.cat([out.hidden_states[i + 1][0] for i in layers], dim=-1)

    logits, taps = forward(prompt)
    tokens = [*prompt, int(logits[-1].argmax())]
    drafter.open("rollout", tokens, taps)
    max_len = len(prompt) + max_new
    start, new_ids, new_taps = len(prompt), [], None
    proposals, acceptances = [], []
    while start < max_len:
        request = DraftRequest("rollout", new_ids, len(tokens), drafter.max_block, SamplingParams(),
                               position=len(tokens) - len(prompt), new_taps=new_taps)
        block = drafter.propose([request])[0]
        assert block.error is None, block.error
        drafts = block.ids
        logits, taps = forward(tokens + drafts)
        greedy = logits[start:].argmax(-1).tolist()  # the target's choice after the anchor and each draft
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == greedy[accepted]:
            accepted += 1
        stop_at = next((j for j in range(accepted) if drafts[j] in stop_ids), None)
        if stop_at is not None:  # an accepted stop token ends the round with no bonus token
            proposals.append(stop_at + 1)
            acceptances.append(stop_at + 1)
            tokens += drafts[: stop_at + 1]
            start += stop_at + 1
            break
        proposals.append(len(drafts))
        new_ids = [*drafts[:accepted], greedy[accepted]]
        new_taps = taps[start : start + accepted + 1]
        tokens += new_ids
        acceptances.append(accepted + 1)
        start += accepted + 1
        if any(t in stop_ids for t in new_ids):
            break
    drafter.close("rollout")
    output = tokens[: min(start + 1, max_len)]
    stop = next((i for i in range(len(prompt), len(output)) if output[i] in stop_ids), None)
    return {"output_ids": output if stop is None else output[: stop + 1], "proposal_lengths": proposals,
            "acceptance_lengths": acceptances}
