"""Eagle3: reproduce DeepSpec's TTT forward and rollout; inference cache = TTT attention pattern."""

from __future__ import annotations

import pytest
import torch
from deepspec_reference import REFERENCE, TOLERANCE, greedy_rollout, max_error, summary, tensors

from specserve.drafters.checkpoint import load_drafter
from specserve.drafters.draft_kv_cache import DraftKVCache
from specserve.drafters.eagle3 import Eagle3Model
from specserve.drafters.eagle3_drafter import Eagle3Drafter


def qwen3_model() -> Eagle3Model:
    return load_drafter(REFERENCE / "eagle3" / "checkpoint")


def test_ttt_forward_matches_deepspec():
    model, ref, inputs = qwen3_model(), tensors("eagle3/train_forward.safetensors"), tensors("inputs.safetensors")
    with torch.no_grad():
        steps = model.ttt_forward(inputs["target_hidden_states"], inputs["input_ids"], inputs["attention_mask"])
    assert len(steps) == 3
    for k, logits in enumerate(steps):
        assert max_error(logits, ref[f"ttt_step{k}_draft_logits"]) < TOLERANCE, f"step {k}"


def ttt_metrics(model: Eagle3Model, inputs: dict) -> dict[str, float]:
    """DeepSpec's per-step soft cross-entropy (normalised by B·L) and accept rate of the TTT steps."""
    ids = inputs["input_ids"]
    bsz, seq_len = ids.shape
    steps = model.cfg.ttt_length
    with torch.no_grad():
        logits = model.ttt_forward(inputs["target_hidden_states"], ids, inputs["attention_mask"])
        p = torch.softmax(model.target_logits(inputs["target_last_hidden_states"]).float(), -1)
    vocab = p.shape[-1]
    p = torch.cat([p[:, 1:], torch.full((bsz, steps + 1, vocab), 1.0 / vocab)], dim=1)  # next-token targets
    mask = inputs["loss_mask"].float().clone()
    mask[:, seq_len - 1] = 0  # the last token has no next token
    out = {}
    for k, step_logits in enumerate(logits):
        target = p[:, k : k + seq_len]
        m = torch.cat([mask[:, k:], torch.zeros(bsz, k)], dim=1)
        ce = -(target * torch.log_softmax(step_logits.float(), -1)).sum(-1)
        accept = (1 - 0.5 * (torch.softmax(step_logits.float(), -1) - target).abs().sum(-1)).clamp(0, 1)
        out[f"train/ploss_{k}"] = ((ce * m).sum() / (bsz * seq_len)).item()
        out[f"train/accept_rate@{k}"] = ((accept * m).sum() / m.sum()).item()
    return out


@pytest.mark.parametrize("folder", ["eagle3", "gemma4"])
def test_ttt_losses_match_deepspec(folder):
    """The Gemma4 Eagle3 reference stores no logits, only per-step losses and accept rates: match those."""
    if folder == "gemma4":
        model = load_drafter(REFERENCE / "gemma4" / "eagle3_checkpoint")
        inputs, metrics = tensors("gemma4/inputs.safetensors"), summary("gemma4/summary.json")["eagle3"]["metrics"]
    else:
        model, inputs, metrics = qwen3_model(), tensors("inputs.safetensors"), summary("eagle3/summary.json")["metrics"]
    got = ttt_metrics(model, inputs)
    for name, value in got.items():
        assert abs(value - metrics[name]) < TOLERANCE, name


def test_greedy_rollout_matches_deepspec(tiny_qwen3_target):
    rollout = summary("eagle3/summary.json")["rollout"]
    prompt = tensors("inputs.safetensors")["input_ids"][0, :20].tolist()
    got = greedy_rollout(Eagle3Drafter(qwen3_model()), tiny_qwen3_target, prompt, 48, (510,))
    assert got["output_ids"] == rollout["output_ids"]
    assert got["proposal_lengths"] == rollout["proposal_lengths"]
    assert got["acceptance_lengths"] == rollout["acceptance_lengths"]


def test_inference_cache_reproduces_the_ttt_steps():
    """Extend committed slots 0..t, then draft with the true next tokens: logits = TTT steps 0, 1, 2 at t.

    TTT step k at position t attends to step-0 keys <= t plus its own earlier-step keys at t, which is
    exactly what a cache of committed slots followed by k speculative slots holds.
    """
    model, inputs = qwen3_model(), tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"][0], inputs["input_ids"][0]
    with torch.no_grad():
        ttt = model.ttt_forward(taps[None], ids[None])
    for t in (0, 6, 23, 36):
        cache = DraftKVCache(1)
        g = model.extend([cache], [taps[: t + 1]], [ids[1 : t + 2].tolist()])
        assert max_error(model.logits(g), ttt[0][:, t]) < TOLERANCE
        for k in (1, 2):
            g = model.step([cache], g, ids[t + 1 + k][None])
            assert max_error(model.logits(g), ttt[k][:, t]) < TOLERANCE, (t, k)
        assert cache.length == t + 3


def test_chunked_ragged_extension_equals_one_pass():
    model, inputs = qwen3_model(), tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"], inputs["input_ids"]
    one = model.extend([DraftKVCache(1)], [taps[0, :30]], [ids[0, 1:31].tolist()])
    a, b = DraftKVCache(1), DraftKVCache(1)
    model.extend([a, b], [taps[0, :7], taps[1, :19]], [ids[0, 1:8].tolist(), ids[1, 1:20].tolist()])
    both = model.extend([a, b], [taps[0, 7:30], taps[1, 19:21]], [ids[0, 8:31].tolist(), ids[1, 20:22].tolist()])
    alone = model.extend([DraftKVCache(1)], [taps[1, :21]], [ids[1, 1:22].tolist()])
    assert max_error(both[0], one[0]) < TOLERANCE
    assert max_error(both[1], alone[0]) < TOLERANCE
    assert (a.length, b.length) == (30, 21)
