"""Eagle3Drafter: speculative slots are dropped each round, budgets and stop tokens end drafting, q is exact."""

from __future__ import annotations

import torch
from deepspec_reference import REFERENCE, TOLERANCE, max_error, tensors

from specserve.decoding.sampling import SamplingParams, logits_to_probs
from specserve.drafters.base import DraftRequest
from specserve.drafters.checkpoint import load_drafter
from specserve.drafters.draft_kv_cache import DraftKVCache
from specserve.drafters.eagle3 import Eagle3Model
from specserve.drafters.eagle3_drafter import Eagle3Drafter


def qwen3_model() -> Eagle3Model:
    return load_drafter(REFERENCE / "eagle3" / "checkpoint")


def test_drafter_rolls_back_speculative_slots_and_stops_at_stop_tokens():
    inputs = tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"][0], inputs["input_ids"][0].tolist()
    drafter = Eagle3Drafter(qwen3_model())
    drafter.open("a", ids[:21], taps[:20])
    first = drafter.propose([DraftRequest("a", [], 21, 3, SamplingParams(), position=1)])[0]
    assert len(first.ids) == 3 and first.q is None
    # commit two tokens with their taps; the speculative slots of the first round must not survive
    second = drafter.propose([DraftRequest("a", ids[21:23], 23, 3, SamplingParams(), position=3,
                                           new_taps=taps[20:22])])[0]
    fresh = Eagle3Drafter(qwen3_model())
    fresh.open("b", ids[:23], taps[:22])
    assert second.ids == fresh.propose([DraftRequest("b", [], 23, 3, SamplingParams(), position=3)])[0].ids
    stop = second.ids[0]
    stopped = fresh.propose([DraftRequest("b", [], 23, 3, SamplingParams(stop_token_ids=(stop,)), position=3)])[0]
    assert stopped.ids == [stop]
    budget = fresh.propose([DraftRequest("b", [], 23, 2, SamplingParams(), position=3)])[0]
    assert budget.ids == second.ids[:2]


def test_sampled_q_matches_the_logits_the_token_was_drawn_from():
    inputs = tensors("inputs.safetensors")
    taps, ids = inputs["target_hidden_states"][0], inputs["input_ids"][0].tolist()
    model = qwen3_model()
    drafter = Eagle3Drafter(model)
    drafter.open("a", ids[:21], taps[:20])
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3)
    block = drafter.propose([DraftRequest("a", [], 21, 3, params, position=1)])[0]
    assert block.q.shape == (3, model.cfg.vocab_size)
    cache = DraftKVCache(1)
    g = model.extend([cache], [taps[:20]], [ids[1:21]])
    for j, token in enumerate(block.ids):
        assert max_error(block.q[j], logits_to_probs(model.logits(g), [params])[0]) < TOLERANCE
        g = model.step([cache], g, torch.tensor([token]))
