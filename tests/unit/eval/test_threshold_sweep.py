"""Static threshold sweep: hand-computed replays and agreement with the engine's StaticThreshold policy."""

import numpy as np
import pytest
import torch

from specserve.decoding.budget import StaticThreshold
from specserve.engine.request import RoundRecord
from specserve.eval.threshold_sweep import threshold_sweep

# survival: (0.9, 0.72, 0.36) / (0.6, 0.3, 0.03)
A = RoundRecord(drafted=3, verified=3, accepted=3, committed=4, confidence=(0.9, 0.8, 0.5))
B = RoundRecord(drafted=3, verified=3, accepted=1, committed=2, confidence=(0.6, 0.5, 0.1))


def test_replay_by_hand():
    sweep = threshold_sweep([A, B], thresholds=[0.0, 0.5, 0.8, 0.95])
    p0, p5, p8, p95 = sweep.points
    # t = 0: the recorded rounds: verify 3 + 3, accept 3 + 1, commit 4 + 2
    assert (p0.verified_per_round, p0.accepted_per_round, p0.rejected_per_round) == (3.0, 2.0, 1.0)
    assert p0.acceptance_rate == pytest.approx(4 / 6) and p0.tau == pytest.approx(3.0)
    # t = 0.5: A verifies 2 (0.36 ≤ 0.5) and accepts both (+ bonus); B verifies 1 and accepts it (+ bonus)
    assert (p5.verified_per_round, p5.accepted_per_round, p5.rejected_per_round) == (1.5, 1.5, 0.0)
    assert p5.acceptance_rate == 1.0 and p5.tau == pytest.approx(2.5)
    # t = 0.8: A verifies 1, B none (plain decoding: one token)
    assert (p8.verified_per_round, p8.accepted_per_round, p8.tau) == (0.5, 0.5, 1.5)
    # t = 0.95: nothing verified, τ = 1, acceptance rate undefined
    assert p95.verified_per_round == 0.0 and p95.acceptance_rate is None and p95.tau == 1.0
    assert (sweep.rounds_used, sweep.rounds_skipped) == (2, 0)


def test_stop_round_keeps_its_stop():
    stop = RoundRecord(drafted=3, verified=3, accepted=2, committed=2, confidence=(0.9, 0.9, 0.9))  # stop at 2
    p_all, p_one = threshold_sweep([stop], thresholds=[0.0, 0.85]).points
    assert (p_all.verified_per_round, p_all.accepted_per_round, p_all.rejected_per_round, p_all.tau) == (3, 2, 1, 2)
    assert (p_one.verified_per_round, p_one.accepted_per_round, p_one.tau) == (1, 1, 2)  # 0.81 ≤ 0.85: bonus


def test_only_fully_verified_rounds_with_confidences_are_replayed():
    partial = RoundRecord(drafted=3, verified=1, accepted=1, committed=2, confidence=(0.9, 0.9, 0.9))
    plain = RoundRecord(drafted=3, verified=3, accepted=0, committed=1)
    sweep = threshold_sweep([A, partial, plain], thresholds=[0.0])
    assert (sweep.rounds_used, sweep.rounds_skipped) == (1, 2)
    assert sweep.points[0].accepted_per_round == 3.0
    with pytest.raises(ValueError, match="fully verified"):
        threshold_sweep([partial, plain])


def test_verified_length_matches_the_static_threshold_policy():
    rng = np.random.default_rng(0)
    rounds = []
    for _ in range(40):
        n = int(rng.integers(1, 7))
        conf = tuple(rng.uniform(0.3, 1.0, size=n).tolist())
        rounds.append(RoundRecord(drafted=n, verified=n, accepted=n, committed=n + 1, confidence=conf))
    for t in (0.0, 0.2, 0.5, 0.7, 0.9):
        policy = StaticThreshold(threshold=t, max_block=8)
        for r in rounds:
            expected = policy.budget([r.drafted], [torch.tensor(r.confidence)], None)[0]
            assert threshold_sweep([r], thresholds=[t]).points[0].verified_per_round == expected


def test_temperatures_are_applied_before_the_threshold():
    r = RoundRecord(drafted=1, verified=1, accepted=1, committed=2, confidence=(0.9,))
    assert threshold_sweep([r], thresholds=[0.8]).points[0].verified_per_round == 1
    # T = 4 pulls 0.9 down to σ(logit(0.9) / 4) ≈ 0.635, below the threshold
    assert threshold_sweep([r], thresholds=[0.8], temperatures=[4.0]).points[0].verified_per_round == 0


def test_higher_thresholds_raise_the_acceptance_rate_of_a_useful_head(make_rounds):
    sweep = threshold_sweep(make_rounds(3_000, gamma=5, overconfidence=1.0, seed=2))
    rates = [p.acceptance_rate for p in sweep.points if p.acceptance_rate is not None]
    verified = [p.verified_per_round for p in sweep.points]
    assert verified == sorted(verified, reverse=True)
    assert rates[-1] > rates[0] + 0.2
    assert sweep.to_dict()["points"][0]["threshold"] == 0.0
