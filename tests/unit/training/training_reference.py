"""The DeepSpec tiny reference fixtures, as the training tests use them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from specserve.drafters.checkpoint import FROZEN_KEYS, load_drafter

REFERENCE = Path(__file__).parents[2] / "fixtures" / "deepspec_tiny"
DSPARK_VARIANTS = ["dspark_markov_vanilla", "dspark_markov_gated", "dspark_rnn", "dspark_conf_no_markov_feat", "dflash"]
TOLERANCE = 1e-5


def tensors(relative: str) -> dict[str, torch.Tensor]:
    return load_file(REFERENCE / relative)


def summary(variant: str) -> dict:
    return json.loads((REFERENCE / variant / "summary.json").read_text())


def trainable_reference(variant: str):
    """The reference draft with every parameter but the shared embedding/head trainable, as DeepSpec trains it."""
    model = load_drafter(REFERENCE / variant / "checkpoint")
    for name, param in model.named_parameters():
        param.requires_grad_(name not in FROZEN_KEYS)
    return model


def max_grad_error(model, variant: str) -> float:
    """Largest |grad - reference grad| over every trainable parameter (each must have a reference)."""
    ref = tensors(f"{variant}/grads.safetensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == set(ref), set(params) ^ set(ref)
    return max((params[n].grad - g).abs().max().item() for n, g in ref.items())
