"""DSpark/DFlash: reproduce DeepSpec's reference outputs, and the inference cache/sampling contracts."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from deepspec_reference import QWEN3_DSPARK, REFERENCE, TOLERANCE, greedy_rollout, max_error, summary, tensors

from specserve.decoding.sampling import SamplingParams, logits_to_probs
from specserve.drafters.base import DraftRequest
from specserve.drafters.checkpoint import load_drafter, model_class
from specserve.drafters.draft_config import DraftConfig
from specserve.drafters.draft_kv_cache import DraftKVCache
from specserve.drafters.dspark import BlockInput, DSparkModel
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.layers import softcap
from specserve.drafters.tap_session import BatchSampler


def reference_model(variant: str) -> DSparkModel:
    return load_drafter(REFERENCE / variant / "checkpoint")


@pytest.mark.parametrize("variant", QWEN3_DSPARK)
def test_train_forward_matches_deepspec(variant):
    model, ref, inputs = reference_model(variant), tensors(f"{variant}/train_forward.safetensors"), tensors(
        "inputs.safetensors")
    with torch.no_grad():
        out = model.train_forward(inputs["target_hidden_states"], inputs["input_ids"], ref["anchor_positions"],
                                  ref["block_keep_mask"])
    assert torch.equal(out.target_ids, ref["target_ids"])
    assert max_error(out.draft_logits, ref["draft_logits"]) < TOLERANCE
    assert (out.confidence_logits is None) == ("confidence_pred" not in ref)
    if out.confidence_logits is not None:
        assert max_error(out.confidence_logits, ref["confidence_pred"]) < TOLERANCE


@pytest.mark.parametrize("variant", QWEN3_DSPARK)
def test_inference_step_matches_deepspec(variant):
    model, ref = reference_model(variant), tensors(f"{variant}/inference_step.safetensors")
    cache = DraftKVCache(model.cfg.num_layers)
    context = ref["context_feature"][0]
    out = model.draft_block([BlockInput(cache, context, int(ref["draft_input_ids"][0, 0]))])
    assert max_error(out.hidden, ref["block_hidden"]) < TOLERANCE
    assert max_error(out.q, ref["draft_probs"]) < TOLERANCE
    assert out.ids[0].tolist() == ref["verify_input_ids"][0, 1:].tolist()
    if "confidence_logits" in ref:
        assert max_error(out.confidence_logits, ref["confidence_logits"]) < TOLERANCE
    else:
        assert out.confidence_logits is None
    assert cache.length == context.shape[0], "the cache keeps context K/V only, never the block's"


def test_gemma4_train_forward_matches_deepspec():
    model = load_drafter(REFERENCE / "gemma4" / "dspark_checkpoint")
    ref, inputs = tensors("gemma4/dspark_train_forward.safetensors"), tensors("gemma4/inputs.safetensors")
    # the Gemma4 reference does not store its anchors: slot 0 of each block is aligned with the target
    # logits at the anchor, so the anchor is the position whose target logits match exactly
    with torch.no_grad():
        target_logits = softcap(model.cfg, model.lm_head(inputs["target_last_hidden_states"]))
    gap = (ref["aligned_target_logits"][:, :, 0, None, :] - target_logits[:, None]).abs().amax(-1)
    assert gap.min(-1).values.max() < TOLERANCE
    anchors = gap.argmin(-1)
    with torch.no_grad():
        out = model.train_forward(inputs["target_hidden_states"], inputs["input_ids"], anchors, ref["block_keep_mask"])
    assert torch.equal(out.target_ids, ref["target_ids"])
    assert max_error(out.draft_logits, ref["draft_logits"]) < TOLERANCE
    assert max_error(out.confidence_logits, ref["confidence_pred"]) < TOLERANCE


@pytest.mark.parametrize("variant", QWEN3_DSPARK)
def test_greedy_rollout_matches_deepspec(variant, tiny_qwen3_target):
    rollout = summary(f"{variant}/summary.json")["rollout"]
    prompt = tensors("inputs.safetensors")["input_ids"][0, :20].tolist()
    got = greedy_rollout(DSparkDrafter(reference_model(variant)), tiny_qwen3_target, prompt, 48, (510,))
    assert got["output_ids"] == rollout["output_ids"]
    assert got["proposal_lengths"] == rollout["proposal_lengths"]
    assert got["acceptance_lengths"] == rollout["acceptance_lengths"]


def test_ragged_batch_equals_one_session_at_a_time():
    model = reference_model("dspark_rnn")
    inputs = tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"], inputs["input_ids"]
    sessions = [(taps[0, :20], int(ids[0, 20])), (taps[1, :9], int(ids[1, 9])), (taps[1, :31], int(ids[1, 31]))]
    alone = [model.draft_block([BlockInput(DraftKVCache(2), t, a)]) for t, a in sessions]
    caches = [DraftKVCache(2) for _ in sessions]
    batch = model.draft_block([BlockInput(c, t, a) for c, (t, a) in zip(caches, sessions, strict=True)])
    for row, single in enumerate(alone):
        assert max_error(batch.hidden[row], single.hidden[0]) < TOLERANCE
        assert batch.ids[row].tolist() == single.ids[0].tolist()
        assert max_error(batch.confidence_logits[row], single.confidence_logits[0]) < TOLERANCE
    assert [c.length for c in caches] == [20, 9, 31]


def test_context_cache_grows_by_committed_taps_and_rolls_back():
    model = reference_model("dspark_markov_gated")
    inputs = tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"][0], inputs["input_ids"][0]
    fresh = model.draft_block([BlockInput(DraftKVCache(2), taps[:17], int(ids[17]))])
    cache = DraftKVCache(2)
    model.draft_block([BlockInput(cache, taps[:12], int(ids[12]))])
    model.draft_block([BlockInput(cache, taps[12:15], int(ids[15]))])  # a round whose drafts are then rolled back
    assert cache.length == 15
    cache.truncate(12)
    grown = model.draft_block([BlockInput(cache, taps[12:17], int(ids[17]))])
    assert cache.length == 17
    assert max_error(grown.hidden, fresh.hidden) < TOLERANCE
    assert grown.ids.tolist() == fresh.ids.tolist()


@pytest.mark.parametrize("variant", ["dspark_markov_vanilla", "dspark_markov_gated", "dspark_rnn"])
def test_sampled_q_is_the_teacher_forced_distribution_of_the_sampled_prefix(variant):
    """q_j must be the processed distribution of slot j given the tokens actually sampled before it."""
    model = reference_model(variant)
    inputs = tensors("inputs.safetensors")
    params = SamplingParams(temperature=1.3, top_k=200, top_p=0.95, seed=7)
    requests = [DraftRequest(f"s{i}", [], 1, 4, params, position=i) for i in range(2)]
    anchors = [int(inputs["input_ids"][0, 25]), int(inputs["input_ids"][1, 30])]
    out = model.draft_block([BlockInput(DraftKVCache(2), inputs["target_hidden_states"][0, :25], anchors[0]),
                             BlockInput(DraftKVCache(2), inputs["target_hidden_states"][1, :30], anchors[1])],
                            sampler=BatchSampler(requests, 4))
    prev = torch.cat([torch.tensor(anchors)[:, None], out.ids[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model.markov_head.block(model.base_logits(out.hidden), out.hidden, prev)
        expected_conf = model.confidence_logits(out.hidden, prev)
    expected = logits_to_probs(logits.reshape(8, -1), [params] * 8).reshape(2, 4, -1)
    assert max_error(out.q, expected) < TOLERANCE
    assert max_error(out.confidence_logits, expected_conf) < TOLERANCE
    assert bool((out.q.gather(-1, out.ids[..., None]) > 0).all()), "every draft has positive probability under q"


@pytest.mark.parametrize("k", [1, 3])
def test_a_trimmed_block_is_the_block_of_a_shorter_draft(k):
    """block_len=k runs the first k slots only: exactly what the same weights with block_size k draft, sampled q
    and confidences included, and the context cache grows as with the full block."""
    model = reference_model("dspark_rnn")
    short = copy.deepcopy(model)
    short.cfg = dataclasses.replace(model.cfg, block_size=k)
    inputs = tensors("inputs.safetensors")
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=3)
    requests = [DraftRequest(f"s{i}", [], 1, k, params, position=i) for i in range(2)]
    sessions = [(inputs["target_hidden_states"][0, :25], int(inputs["input_ids"][0, 25])),
                (inputs["target_hidden_states"][1, :18], int(inputs["input_ids"][1, 18]))]
    caches = [DraftKVCache(2) for _ in sessions]
    got = model.draft_block([BlockInput(c, t, a) for c, (t, a) in zip(caches, sessions, strict=True)], k,
                            BatchSampler(requests, k), block_lens=[k, k])
    want = short.draft_block([BlockInput(DraftKVCache(2), t, a) for t, a in sessions], k, BatchSampler(requests, k))
    full = model.draft_block([BlockInput(DraftKVCache(2), t, a) for t, a in sessions], k, BatchSampler(requests, k))
    assert got.hidden.shape[1] == k and full.hidden.shape[1] == model.cfg.block_size
    assert torch.equal(got.ids, want.ids)
    assert max_error(got.q, want.q) < TOLERANCE
    assert max_error(got.confidence_logits, want.confidence_logits) < TOLERANCE
    assert max_error(got.hidden, full.hidden[:, :k]) > 1e-4, "the mask slots after a slot do shape it"
    assert [c.length for c in caches] == [25, 18]
    for bad in ([0], [k - 1], [model.cfg.block_size + 1], [k, k]):
        if bad != [k - 1] or k > 1:
            with pytest.raises(ValueError, match="block_lens"):
                model.draft_block([BlockInput(DraftKVCache(2), *sessions[0])], k, block_lens=bad)


def test_sessions_of_one_batch_trim_their_own_blocks():
    """Session i's keys stop at its own block_lens[i]: a ragged batch drafts what each session drafts alone."""
    model = reference_model("dspark_markov_gated")
    inputs = tensors("inputs.safetensors")
    sessions = [(inputs["target_hidden_states"][0, :25], int(inputs["input_ids"][0, 25]), 1),
                (inputs["target_hidden_states"][1, :18], int(inputs["input_ids"][1, 18]), 4),
                (inputs["target_hidden_states"][1, :30], int(inputs["input_ids"][1, 30]), 2)]
    batch = model.draft_block([BlockInput(DraftKVCache(2), t, a) for t, a, _ in sessions], 4,
                              block_lens=[n for *_, n in sessions])
    for row, (t, a, n) in enumerate(sessions):
        alone = model.draft_block([BlockInput(DraftKVCache(2), t, a)], n, block_lens=[n])
        assert batch.ids[row, :n].tolist() == alone.ids[0].tolist()
        assert max_error(batch.hidden[row, :n], alone.hidden[0]) < TOLERANCE
        assert max_error(batch.confidence_logits[row, :n], alone.confidence_logits[0]) < TOLERANCE


@pytest.mark.parametrize("variant, trims", [("dspark_rnn", True), ("dspark_markov_vanilla", True), ("dflash", False)])
def test_the_drafter_trims_the_block_of_drafts_with_a_sequential_head(variant, trims):
    """A DSpark round drafting 2 tokens runs 2 slots; DFlash (no sequential head) keeps the full block unless asked."""
    model = reference_model(variant)
    inputs = tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"][0, :21], inputs["input_ids"][0, :22].tolist()

    def drafts(drafter):
        drafter.open("s", ids, taps)
        return drafter.propose([DraftRequest("s", [], len(ids), 2, SamplingParams(), position=0)])[0].ids

    assert DSparkDrafter(model).full_block is not trims
    seen = []
    draft_block = model.draft_block

    def spy(*args, **kwargs):
        seen.append(kwargs.get("block_lens"))
        return draft_block(*args, **kwargs)

    model.draft_block = spy
    expected = draft_block([BlockInput(DraftKVCache(model.cfg.num_layers), taps, ids[-1])], 2,
                           block_lens=[2] if trims else None)
    assert drafts(DSparkDrafter(model)) == expected.ids[0].tolist()
    full = draft_block([BlockInput(DraftKVCache(model.cfg.num_layers), taps, ids[-1])], 2)
    assert drafts(DSparkDrafter(model, full_block=True)) == full.ids[0].tolist()
    assert seen == [[2] if trims else None, None], "the block the drafter asked for"


def test_the_sampling_layout_keeps_the_weights_and_the_drafts():
    model = reference_model("dspark_markov_vanilla")
    inputs = tensors("inputs.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    block = [(inputs["target_hidden_states"][0, :20], int(inputs["input_ids"][0, 20]))]
    want = model.draft_block([BlockInput(DraftKVCache(2), t, a) for t, a in block])
    model.markov_head.sampling_layout()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    got = model.draft_block([BlockInput(DraftKVCache(2), t, a) for t, a in block])
    assert torch.equal(got.ids, want.ids)
    assert max_error(got.q, want.q) < TOLERANCE


def test_dummy_blocks_output_zero_attention_and_finite_gradients():
    model = reference_model("dspark_rnn").requires_grad_(True)
    inputs = tensors("inputs.safetensors")
    anchors = torch.tensor([[11, 12, 0], [16, 0, 0]])
    keep = torch.tensor([[True, True, False], [True, False, False]])
    out = model.train_forward(inputs["target_hidden_states"], inputs["input_ids"], anchors, keep)
    assert torch.isfinite(out.draft_logits).all()
    (out.draft_logits[keep].logsumexp(-1).sum() + out.confidence_logits[keep].sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # a kept block does not depend on the dummy blocks next to it
    alone = model.train_forward(inputs["target_hidden_states"], inputs["input_ids"], anchors[:, :1], keep[:, :1])
    assert max_error(out.draft_logits[:, :1], alone.draft_logits) < TOLERANCE


def test_gemma4_attention_k_eq_v_shares_keys_and_values():
    raw = copy.deepcopy(summary("gemma4/dspark_checkpoint/config.json"))
    raw.update(attention_k_eq_v=True, num_global_key_value_heads=1)
    cfg = DraftConfig.from_dict(raw)
    model = model_class(cfg)(cfg).eval()
    keys = model.state_dict()
    assert not any(k.endswith("v_proj.weight") for k in keys)
    assert keys["layers.0.self_attn.k_proj.weight"].shape == (cfg.head_dim, cfg.hidden_size)  # one global KV head
    out = model.draft_block([BlockInput(DraftKVCache(2), torch.randn(6, 320), 3)])
    assert torch.isfinite(out.hidden).all()
