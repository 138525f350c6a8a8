"""τ and per-position counters on hand-made rounds with known answers, and the engine's stop-token record."""

import pytest
import torch

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.draft_lm import DraftModelDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.request import RoundRecord
from specserve.engine.verifier import LocalVerifier
from specserve.eval.acceptance import acceptance_stats, ended_by_stop, observed_length
from specserve.target.model import CausalLM
from tiny_models import tiny_model

ROUNDS = [
    RoundRecord(drafted=4, verified=4, accepted=2, committed=3),  # rejection at 3, replacement token
    RoundRecord(drafted=4, verified=4, accepted=4, committed=5),  # all accepted + bonus
    RoundRecord(drafted=4, verified=2, accepted=0, committed=1),  # budget verified 2, first rejected
    RoundRecord(drafted=4, verified=4, accepted=2, committed=2),  # accepted stop token at 2: no bonus
    RoundRecord(drafted=4, verified=3, accepted=3, committed=4),  # budget verified 3, all accepted + bonus
]


def test_tau_and_token_counts():
    s = acceptance_stats(ROUNDS)
    assert s.rounds == 5
    assert s.tau == pytest.approx(15 / 5)  # 3 + 5 + 1 + 2 + 4: the stop round counts no bonus
    assert (s.drafted, s.verified, s.accepted, s.committed) == (20, 17, 11, 15)
    assert s.verify_rate == pytest.approx(17 / 20)
    assert s.acceptance_rate == pytest.approx(11 / 17)
    assert s.stop_rounds == 1
    assert s.tau_histogram == [0, 1, 1, 1, 1, 1]


def test_per_position_counters_censor_after_an_accepted_stop():
    s = acceptance_stats(ROUNDS)
    # the stop round observes positions 1..2 only; the budget-limited rounds their verified positions
    assert s.observed_per_position == [5, 5, 3, 2]
    assert s.accepted_per_position == [4, 4, 2, 1]
    assert s.reached_per_position == [5, 4, 3, 1]
    assert s.prefix_survival == pytest.approx([4 / 5, 4 / 5, 2 / 3, 1 / 2])
    assert s.conditional_acceptance == pytest.approx([4 / 5, 4 / 4, 2 / 3, 1 / 1])


def test_tau_is_pooled_over_rounds_not_a_mean_of_per_prompt_means():
    short = [RoundRecord(drafted=4, verified=4, accepted=0, committed=1)] * 4  # prompt A: τ = 1
    long = [RoundRecord(drafted=4, verified=4, accepted=4, committed=5)]  # prompt B: τ = 5
    assert acceptance_stats(short + long).tau == pytest.approx(9 / 5)  # not (1 + 5) / 2


def test_stop_detection_and_observed_length():
    assert ended_by_stop(ROUNDS[3]) and observed_length(ROUNDS[3]) == 2
    assert not ended_by_stop(ROUNDS[1]) and observed_length(ROUNDS[1]) == 4
    # a stop token as the replacement/bonus token is an ordinary round: committed = accepted + 1
    assert not ended_by_stop(RoundRecord(drafted=4, verified=4, accepted=1, committed=2))
    assert not ended_by_stop(RoundRecord(drafted=0, verified=0, accepted=0, committed=1))


def test_rounds_without_drafts_count_toward_tau_only():
    s = acceptance_stats([RoundRecord(drafted=0, verified=0, accepted=0, committed=1)] * 3)
    assert s.tau == 1.0 and s.observed_per_position == [] and s.verify_rate is None and s.acceptance_rate is None


def test_no_rounds_is_an_error():
    with pytest.raises(ValueError, match="no verification rounds"):
        acceptance_stats([])


def test_to_dict_carries_counters_and_rates():
    d = acceptance_stats(ROUNDS).to_dict()
    assert d["tau"] == pytest.approx(3.0)
    assert d["conditional_acceptance"] == pytest.approx([0.8, 1.0, 2 / 3, 1.0])
    assert d["verify_rate"] == pytest.approx(0.85)


def test_engine_records_an_accepted_draft_stop_token_as_eval_reads_it():
    """With an exact-copy draft (greedy, 3 per round) the stop token is accepted as draft slot 2 of round 2."""
    torch.manual_seed(0)
    model = tiny_model("qwen3", vocab=64)
    prompt = [10, 20, 30, 40]
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[0, len(prompt):].tolist()
    stop = ref[6]  # prefill commits ref[0]; round 1: drafts ref[1..3] + bonus ref[4]; round 2 drafts ref[5..7]
    assert stop not in ref[:6], "premise: the stop token first appears at output index 6"
    engine = SpecEngine(LocalVerifier(CausalLM(model)), DraftModelDrafter(CausalLM(model), max_block=3))
    request = engine.generate([prompt], SamplingParams(max_tokens=16, stop_token_ids=(stop,)))[0]
    last = request.stats.rounds[-1]
    assert (last.verified, last.accepted, last.committed) == (3, 2, 2)
    assert ended_by_stop(last) and observed_length(last) == 2
    assert acceptance_stats(request.stats.rounds).tau == pytest.approx(request.stats.tau)
