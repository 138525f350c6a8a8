"""ECE / AUROC / Brier against textbook values, and per-position samples of P_k from recorded rounds."""

import itertools

import numpy as np
import pytest
import torch

from specserve.engine.request import RoundRecord
from specserve.eval.calibration import (
    apply_temperatures,
    auroc,
    brier,
    calibration_report,
    ece,
    position_samples,
    reliability,
)


def pairwise_auroc(score, label):
    """The definition: P(score_pos > score_neg) + ½ P(tie), over every positive-negative pair."""
    pos = [s for s, y in zip(score, label) if y]
    neg = [s for s, y in zip(score, label) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


# ---- ECE ------------------------------------------------------------------------------------------------


def test_ece_of_a_perfectly_calibrated_sample_is_near_zero():
    rng = np.random.default_rng(0)
    pred = rng.uniform(size=200_000)
    label = rng.uniform(size=pred.size) < pred
    assert ece(pred, label) < 0.005


def test_ece_textbook_values():
    assert ece(np.full(10, 0.7), np.array([1] * 7 + [0] * 3)) == pytest.approx(0.0, abs=1e-12)
    assert ece(np.full(10, 0.9), np.array([1] * 5 + [0] * 5)) == pytest.approx(0.4)
    # two bins of two: |0.1 − 0.5|·½ + |0.9 − 1.0|·½
    assert ece([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]) == pytest.approx(0.25)
    # a confident, always-wrong predictor
    assert ece([1.0, 1.0, 0.0], [0, 0, 1]) == pytest.approx(1.0)


def test_ece_uses_equal_width_bins():
    # 0.51 and 0.54 share the bin [0.50, 0.55): their errors cancel; with 10 bins so do 0.51 and 0.59
    assert ece([0.51, 0.54], [1, 0]) == pytest.approx(abs(0.525 - 0.5))
    assert ece([0.51, 0.59], [1, 0], n_bins=20) == pytest.approx(0.5 * 0.49 + 0.5 * 0.59)
    assert ece([0.51, 0.59], [1, 0], n_bins=10) == pytest.approx(abs(0.55 - 0.5))


def test_ece_and_brier_of_an_empty_sample_are_zero():
    assert ece([], []) == 0.0 and brier([], []) == 0.0


# ---- Brier ----------------------------------------------------------------------------------------------


def test_brier_textbook_values():
    assert brier([0.8, 0.3], [1, 0]) == pytest.approx((0.2**2 + 0.3**2) / 2)
    assert brier([1.0, 0.0], [1, 0]) == 0.0
    assert brier(np.full(4, 0.5), [1, 0, 1, 0]) == pytest.approx(0.25)


# ---- AUROC ----------------------------------------------------------------------------------------------


def test_auroc_separable_inverted_tied():
    label = [0, 0, 0, 1, 1]
    assert auroc([0.1, 0.2, 0.3, 0.8, 0.9], label) == 1.0
    assert auroc([0.9, 0.8, 0.7, 0.2, 0.1], label) == 0.0
    assert auroc([0.5] * 5, label) == 0.5


def test_auroc_textbook_examples():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)  # ties count one half


def test_auroc_matches_the_pairwise_definition_with_many_ties():
    rng = np.random.default_rng(1)
    score = np.round(rng.uniform(size=300), 1)  # 11 distinct values: many ties
    label = rng.uniform(size=300) < score
    assert auroc(score, label) == pytest.approx(pairwise_auroc(score, label), abs=1e-12)


def test_auroc_is_undefined_with_one_class():
    assert auroc([0.2, 0.9], [1, 1]) is None
    assert auroc([0.2, 0.9], [0, 0]) is None


# ---- reliability ----------------------------------------------------------------------------------------


def test_reliability_bins():
    diagram = reliability([0.1, 0.12, 0.9, 1.0], [0, 1, 1, 1], n_bins=10)
    assert len(diagram.edges) == 11 and sum(diagram.counts) == 4
    assert diagram.counts[1] == 2 and diagram.counts[9] == 2  # 1.0 falls into the last bin
    assert diagram.mean_confidence[1] == pytest.approx(0.11) and diagram.accuracy[1] == pytest.approx(0.5)
    assert diagram.mean_confidence[0] is None and diagram.accuracy[5] is None


# ---- samples from rounds --------------------------------------------------------------------------------

ROUNDS = [
    RoundRecord(drafted=3, verified=3, accepted=1, committed=2, confidence=(0.9, 0.5, 0.4)),
    RoundRecord(drafted=3, verified=3, accepted=3, committed=4, confidence=(0.8, 0.9, 0.7)),
    RoundRecord(drafted=3, verified=1, accepted=1, committed=2, confidence=(0.6, 0.2, 0.1)),  # budget 1
    RoundRecord(drafted=3, verified=3, accepted=1, committed=1, confidence=(0.7, 0.6, 0.5)),  # stop at 1
    RoundRecord(drafted=3, verified=3, accepted=0, committed=1),  # no confidences: skipped
]


def test_position_samples_keep_rounds_observing_k():
    conf, accepted = position_samples(ROUNDS, 2)
    np.testing.assert_allclose(conf, [[0.9, 0.5], [0.8, 0.9]])  # budget-1 and stop-at-1 rounds stop before 2
    assert accepted.tolist() == [1, 3]
    conf, accepted = position_samples(ROUNDS, 1)
    assert conf.shape == (4, 1) and accepted.tolist() == [1, 3, 1, 1]


def test_calibration_report_scores_cumulative_survival():
    report = calibration_report(ROUNDS, n_bins=20)
    assert [p.n for p in report.positions] == [4, 2, 2]
    p2 = report.positions[1]
    assert p2.positive_rate == pytest.approx(0.5)  # accepted ≥ 2: only the second round
    assert p2.mean_prediction == pytest.approx((0.9 * 0.5 + 0.8 * 0.9) / 2)
    assert p2.brier == pytest.approx(((0.45 - 0) ** 2 + (0.72 - 1) ** 2) / 2)
    assert p2.auroc == 1.0
    assert report.positions[0].auroc is None  # every round observing position 1 accepted it
    assert report.to_dict()["positions"][1]["reliability"]["counts"][9] == 1  # 0.45 in [0.45, 0.50)


def test_conditional_auroc_scores_c_k_among_rounds_that_reached_k():
    rounds = [RoundRecord(drafted=2, verified=2, accepted=a, committed=a + 1, confidence=c)
              for a, c in [(0, (0.99, 0.99)), (1, (0.9, 0.2)), (2, (0.9, 0.8)), (1, (0.95, 0.3))]]
    p2 = calibration_report(rounds).positions[1]
    assert p2.auroc_conditional == 1.0  # among rounds accepting slot 1: c_2 ranks slot-2 acceptance perfectly
    # the cumulative P_2 also sees the round that failed slot 1 with P_2 = 0.98 and ranks it first
    assert p2.auroc == pytest.approx(2 / 3)
    assert p2.auroc == pytest.approx(pairwise_auroc([0.9801, 0.18, 0.72, 0.285], [0, 0, 1, 0]))


def test_calibration_report_without_confidences_is_empty():
    report = calibration_report([RoundRecord(drafted=2, verified=2, accepted=1, committed=2)])
    assert report.positions == [] and report.ece == []


def test_apply_temperatures_numpy_and_torch_agree():
    conf = np.array([[0.9, 0.6, 0.3], [0.99, 0.5, 0.1]])
    temps = [2.0, 0.5]
    expected = 1 / (1 + np.exp(-np.log(conf / (1 - conf)) / np.array([2.0, 0.5, 1.0])))
    np.testing.assert_allclose(apply_temperatures(conf, temps), expected, rtol=1e-9)
    out = apply_temperatures(torch.tensor(conf, dtype=torch.float32), temps)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert apply_temperatures(conf, None) is not None and np.array_equal(apply_temperatures(conf, None), conf)


def test_apply_temperatures_is_finite_at_zero_and_one():
    out = apply_temperatures(np.array([0.0, 1.0]), [3.0, 3.0])
    assert np.all(np.isfinite(out)) and 0 < out[0] < 0.5 < out[1] < 1
