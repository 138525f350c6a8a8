"""Sequential Temperature Scaling: it fixes an overconfident head without reordering it; the sidecar file."""

import json

import numpy as np
import pytest

from specserve.engine.request import RoundRecord
from specserve.errors import ModelLoadError
from specserve.eval.calibration import calibration_report
from specserve.eval.sts import FORMAT, SIDECAR_NAME, STSCalibration, fit_sts, load_calibration, save_calibration


@pytest.fixture(scope="module")
def overconfident(make_rounds):
    rounds = make_rounds(16_000, gamma=5, overconfidence=2.0, seed=3)
    return rounds[:8_000], rounds[8_000:]  # fit on one half, measure on the other


def test_sts_recovers_the_overconfidence_at_every_position(overconfident):
    fit, _ = overconfident
    sts = fit_sts(fit)
    assert len(sts.temperatures) == 5
    assert all(1.6 < t < 2.5 for t in sts.temperatures), sts.temperatures
    assert all(after <= before for before, after in zip(sts.ece_before, sts.ece_after))


def test_sts_lowers_held_out_ece_and_keeps_the_ranking(overconfident):
    fit, held_out = overconfident
    sts = fit_sts(fit)
    raw = calibration_report(held_out)
    scaled = calibration_report(held_out, temperatures=sts.temperatures)
    for before, after in zip(raw.positions, scaled.positions):
        assert before.ece > 0.04, "the synthetic head must start overconfident"
        assert after.ece < 0.025 and after.ece < before.ece / 2
        assert after.brier < before.brier
        # each T_k is monotone on slot k: the per-slot ranking is exactly unchanged ...
        assert after.auroc_conditional == pytest.approx(before.auroc_conditional, abs=1e-12)
    assert scaled.positions[0].auroc == pytest.approx(raw.positions[0].auroc, abs=1e-12)
    # ... but a product of rescaled factors can reorder rounds, so the cumulative AUROC (k ≥ 2) moves a little
    for before, after in zip(raw.positions[1:], scaled.positions[1:]):
        assert after.auroc == pytest.approx(before.auroc, abs=0.01)


def test_sts_leaves_a_calibrated_head_near_temperature_one(make_rounds):
    sts = fit_sts(make_rounds(6_000, gamma=3, overconfidence=1.0, seed=5))
    assert all(0.8 < t < 1.25 for t in sts.temperatures), sts.temperatures


def test_sts_fits_only_observed_positions_and_records_provenance():
    rounds = [RoundRecord(drafted=4, verified=2, accepted=a, committed=a + 1, confidence=(0.9, 0.8, 0.7, 0.6))
              for a in (0, 1, 2, 2)]
    sts = fit_sts(rounds, fitted_on={"benchmarks": ["gsm8k"]})
    assert len(sts.temperatures) == 2  # positions 3 and 4 were never verified
    assert sts.fitted_on["rounds_per_position"] == [4, 4]
    assert sts.fitted_on["benchmarks"] == ["gsm8k"] and sts.fitted_on["n_bins"] == 20


def test_sts_needs_confidences():
    with pytest.raises(ValueError, match="confidence head"):
        fit_sts([RoundRecord(drafted=3, verified=3, accepted=1, committed=2)])
    with pytest.raises(ValueError, match="grid"):
        fit_sts([RoundRecord(drafted=1, verified=1, accepted=1, committed=2, confidence=(0.5,))], grid=[0.0, 1.0])


def test_sidecar_round_trip(tmp_path):
    sts = STSCalibration(temperatures=(1.5, 2.0), fitted_on={"rounds": 10}, ece_before=(0.05, 0.07),
                         ece_after=(0.01, 0.012))
    path = save_calibration(tmp_path, sts)
    assert path == tmp_path / SIDECAR_NAME
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT and raw["temperatures"] == [1.5, 2.0]
    assert load_calibration(tmp_path) == sts


def test_missing_sidecar_means_uncalibrated(tmp_path):
    assert load_calibration(tmp_path) is None


@pytest.mark.parametrize("content, field", [
    ({"format": "other", "temperatures": [1.0]}, "format"),
    ({"format": FORMAT, "temperatures": []}, "temperatures"),
    ({"format": FORMAT, "temperatures": [1.0, -2.0]}, "temperatures"),
    ({"format": FORMAT, "temperatures": [1.0], "fitted_on": [1]}, "fitted_on"),
    ({"format": FORMAT, "temperatures": [1.0], "ece_after": ["x"]}, "ece_after"),
    ([1.0], "JSON object"),
])
def test_malformed_sidecar_names_the_field(tmp_path, content, field):
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=field) as err:
        load_calibration(tmp_path)
    assert SIDECAR_NAME in str(err.value)


def test_unreadable_sidecar_is_an_error(tmp_path):
    (tmp_path / SIDECAR_NAME).write_text("{not json")
    with pytest.raises(ModelLoadError, match="JSON"):
        load_calibration(tmp_path)


def test_fit_is_deterministic(make_rounds):
    rounds = make_rounds(2_000, gamma=2, overconfidence=1.5, seed=9)
    first, second = fit_sts(rounds), fit_sts(list(reversed(rounds)))
    assert first.temperatures == second.temperatures  # the fit does not depend on the order of the rounds
    np.testing.assert_allclose(first.ece_after, second.ece_after, rtol=1e-9)
