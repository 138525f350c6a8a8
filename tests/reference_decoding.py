"""Plain target decoding with the HF model's own forward: the references the engine must match."""

from __future__ import annotations

import itertools

import torch

from specserve.decoding.sampling import SamplingParams, logits_to_probs


@torch.no_grad()
def greedy_continuation(model, prompt: list[int], n_tokens: int) -> list[int]:
    """The first `n_tokens` greedy tokens after `prompt`, recomputing the full forward every step."""
    ids = list(prompt)
    for _ in range(n_tokens):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def exact_joint(model, prompt: list[int], params: SamplingParams, n_tokens: int) -> torch.Tensor:
    """P(first n_tokens outputs = x_1..x_n) under plain target sampling, as a [V] * n tensor.

    Enumerates every prefix (V^(n-1) sequences at the deepest level), so only for tiny vocabularies.
    """
    vocab = model.get_output_embeddings().weight.shape[0]
    joint = torch.ones(1, dtype=torch.float64)
    for depth in range(n_tokens):
        prefixes = torch.tensor(list(itertools.product(range(vocab), repeat=depth)), dtype=torch.long)
        prefixes = prefixes.reshape(vocab**depth, depth)
        ids = torch.cat([torch.tensor(prompt).expand(len(prefixes), -1), prefixes], dim=1)
        logits = model(input_ids=ids, use_cache=False).logits[:, -1]
        probs = logits_to_probs(logits, [params] * len(ids)).double()
        joint = (joint[:, None] * probs).reshape(-1)
    return joint.reshape([vocab] * n_tokens)
