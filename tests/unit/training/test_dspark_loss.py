"""DSpark/DFlash loss: reproduce DeepSpec's loss, logged terms and gradients on the reference batch."""

from __future__ import annotations

import math

import pytest
import torch
from training_reference import DSPARK_VARIANTS, TOLERANCE, max_grad_error, summary, tensors, trainable_reference

from specserve.training.anchors import supervision_mask
from specserve.training.dspark_loss import (
    DSparkLossWeights,
    acceptance_terms,
    aligned_target_logits,
    dspark_loss,
    slot_weights,
)


def reference_loss(variant: str):
    model, inputs, ref = trainable_reference(variant), tensors("inputs.safetensors"), tensors(
        f"{variant}/train_forward.safetensors")
    args = summary(variant)["model_args"]
    anchors, keep = ref["anchor_positions"], ref["block_keep_mask"].bool()
    supervised = supervision_mask(anchors, keep, inputs["loss_mask"], model.cfg.block_size)
    out = model.train_forward(inputs["target_hidden_states"], inputs["input_ids"], anchors, keep)
    target = aligned_target_logits(model, inputs["target_last_hidden_states"], anchors)
    weights = DSparkLossWeights(args["ce_loss_alpha"], args["l1_loss_alpha"], args["confidence_head_alpha"],
                                args["loss_decay_gamma"])
    return model, ref, supervised, target, dspark_loss(out, target, supervised, keep, weights)


@pytest.mark.parametrize("variant", DSPARK_VARIANTS)
def test_loss_terms_and_gradients_match_deepspec(variant):
    model, ref, supervised, target, out = reference_loss(variant)
    expected = summary(variant)
    assert torch.equal(supervised, ref["eval_mask"].bool())
    assert abs(out.loss.item() - expected["loss"]) < TOLERANCE
    logged = {name: (num / den).item() for name, (num, den) in out.terms.items()}
    names = ["ce_loss", "tau_probabilistic"] + [f"accept_rate@{j}" for j in range(model.cfg.block_size)]
    names += [n for n in ("l1_loss", "confidence_loss") if f"train/{n}" in expected["metrics"]]
    for name in names:
        assert abs(logged[name] - expected["metrics"][f"train/{name}"]) < TOLERANCE, name
    assert set(logged) == set(names)
    out.loss.backward()
    assert max_grad_error(model, variant) < TOLERANCE
    grad_norm = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None))
    assert abs(grad_norm - expected["grad_norm"]) < TOLERANCE


def test_aligned_target_logits_match_deepspec_on_supervised_slots():
    _, ref, supervised, target, _ = reference_loss("dspark_rnn")
    assert (target - ref["aligned_target_logits"])[supervised].abs().max() < TOLERANCE


def test_slot_weights_decay_and_mask():
    supervised = torch.tensor([[[True, True, False, False]]])
    w = slot_weights(supervised, 4.0)
    assert torch.allclose(w, torch.tensor([[[1.0, math.exp(-0.25), 0.0, 0.0]]]))
    assert torch.equal(slot_weights(supervised, 0.0), supervised.float())


def test_distributed_normaliser_and_world_size_scaling():
    """Two halves with a summed normaliser and x2 scaling add up to the loss of the whole batch (DDP averages)."""
    _, ref, supervised, target, whole = reference_loss("dspark_markov_vanilla")
    model = trainable_reference("dspark_markov_vanilla")
    inputs = tensors("inputs.safetensors")
    anchors, keep = ref["anchor_positions"], ref["block_keep_mask"].bool()
    weights = DSparkLossWeights()
    total_den = slot_weights(supervised, weights.loss_decay_gamma).sum()
    halves = []
    for rows in (slice(0, 1), slice(1, 2)):
        out = model.train_forward(inputs["target_hidden_states"][rows], inputs["input_ids"][rows], anchors[rows],
                                  keep[rows])
        halves.append(dspark_loss(out, target[rows], supervised[rows], keep[rows], weights,
                                  reduce=lambda _, d=total_den: d.clone(), world_size=2).loss)
    assert abs((halves[0] + halves[1]).item() / 2 - whole.loss.item()) < TOLERANCE


def test_dflash_without_target_distribution_is_ce_only():
    model, ref, supervised, _, _ = reference_loss("dflash")
    inputs = tensors("inputs.safetensors")
    anchors, keep = ref["anchor_positions"], ref["block_keep_mask"].bool()
    out = model.train_forward(inputs["target_hidden_states"], inputs["input_ids"], anchors, keep)
    loss = dspark_loss(out, None, supervised, keep, DSparkLossWeights(1.0, 0.0, 0.0))
    assert set(loss.terms) == {"ce_loss"}
    assert abs(loss.loss.item() - summary("dflash")["loss"]) < TOLERANCE
    with pytest.raises(ValueError, match="final hidden"):
        dspark_loss(out, None, supervised, keep, DSparkLossWeights())


def test_tau_counts_only_blocks_with_a_supervised_slot():
    accept = torch.full((1, 3, 2), 0.5)
    supervised = torch.tensor([[[True, True], [True, False], [False, False]]])
    keep = torch.tensor([[True, True, False]])
    terms = acceptance_terms(accept, supervised, keep)
    num, den = terms["tau_probabilistic"]
    assert den.item() == 2
    assert num.item() == pytest.approx((1 + 0.5 + 0.25) + (1 + 0.5))
    assert [t[1].item() for k, t in sorted(terms.items()) if k.startswith("accept")] == [2.0, 1.0]

