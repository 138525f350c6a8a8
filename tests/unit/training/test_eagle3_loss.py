"""Eagle3 TTT loss: reproduce DeepSpec's loss, per-step terms, tau and gradients on the reference batch."""

from __future__ import annotations

import math

import torch
from training_reference import TOLERANCE, max_grad_error, summary, tensors, trainable_reference

from specserve.training.eagle3_loss import eagle3_loss, step_masks


def test_ttt_loss_terms_and_gradients_match_deepspec():
    model, inputs, expected = trainable_reference("eagle3"), tensors("inputs.safetensors"), summary("eagle3")
    out = eagle3_loss(model, inputs["target_hidden_states"], inputs["input_ids"], inputs["loss_mask"],
                      inputs["attention_mask"].sum(-1), inputs["target_last_hidden_states"],
                      expected["model_args"]["step_loss_decay"])
    assert abs(out.loss.item() - expected["loss"]) < TOLERANCE
    logged = {name: (num / den).item() for name, (num, den) in out.terms.items()}
    assert set(logged) == {"tau_probabilistic", *(f"{n}_{k}" for n in ("ploss",) for k in range(3)),
                           *(f"accept_rate@{k}" for k in range(3))}
    for name, value in logged.items():
        assert abs(value - expected["metrics"][f"train/{name}"]) < TOLERANCE, name
    out.loss.backward()
    assert max_grad_error(model, "eagle3") < TOLERANCE
    grad_norm = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None))
    assert abs(grad_norm - expected["grad_norm"]) < TOLERANCE


def test_step_masks_drop_each_rows_last_token_and_shift():
    loss_mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    masks = step_masks(loss_mask, torch.tensor([4, 6]), 3)
    assert masks[0].tolist() == [[0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert masks[2].tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]


def test_padding_does_not_change_the_loss_of_a_row():
    """A row padded into a longer batch keeps its loss numerator (the B*L normaliser grows, as in DeepSpec)."""
    model, inputs = trainable_reference("eagle3"), tensors("inputs.safetensors")
    row = {k: v[1:, :34] for k, v in inputs.items()}  # sample 1 is supervised on 16..33
    alone = eagle3_loss(model, row["target_hidden_states"], row["input_ids"], row["loss_mask"], torch.tensor([34]),
                        row["target_last_hidden_states"])
    padded = {k: v[1:].clone() for k, v in inputs.items()}
    for key in ("target_hidden_states", "target_last_hidden_states", "input_ids", "loss_mask"):
        padded[key][:, 34:] = 0
    longer = eagle3_loss(model, padded["target_hidden_states"], padded["input_ids"], padded["loss_mask"],
                         torch.tensor([34]), padded["target_last_hidden_states"])
    for name in ("ploss_0", "ploss_2", "accept_rate@1", "tau_probabilistic"):
        (a, da), (b, db) = alone.terms[name], longer.terms[name]
        if not name.startswith("ploss"):  # ploss: compare numerators; the others are means
            a, b = a / da, b / db
        assert abs(float(a) - float(b)) < 1e-4, name
