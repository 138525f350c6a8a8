"""A calibrated DSpark draft applies its STS temperatures at inference (drafters/factory.py loads the
`calibration.json` sidecar, DSparkDrafter rescales each slot's confidence before it reaches the budget policy)."""

import shutil

import numpy as np
import pytest

from specserve.decoding.budget import FixedK
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.factory import load_tap_drafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.errors import ModelLoadError
from specserve.eval.calibration import apply_temperatures
from specserve.eval.sts import SIDECAR_NAME, STSCalibration, save_calibration
from specserve.target.model import CausalLM

TEMPERATURES = (2.0, 0.5, 1.0, 3.0)
PROMPTS = [[1, 5, 7, 9, 11, 13, 2, 3], [3, 4, 5], [40, 41, 42, 43, 44, 45]]


@pytest.fixture(scope="module")
def target(reference_drafts):
    return CausalLM.from_pretrained(str(reference_drafts["dspark"].parents[1] / "tiny_qwen3_target"),
                                    load_tokenizer=False)


def recorded_confidences(target, drafter, temperature):
    engine = SpecEngine(LocalVerifier(target, tap_layers=drafter.target_layer_ids), drafter, policy=FixedK(4))
    params = [SamplingParams(temperature=temperature, max_tokens=20, seed=i) for i in range(len(PROMPTS))]
    requests = engine.generate(PROMPTS, params)
    return [r.confidence for q in requests for r in q.stats.rounds], [q.output_ids for q in requests]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_drafter_applies_the_sidecar_temperatures(tmp_path, target, reference_drafts, temperature):
    draft = shutil.copytree(reference_drafts["dspark"], tmp_path / "draft")
    raw = load_tap_drafter(draft, target)
    assert raw.temperatures is None
    save_calibration(draft, STSCalibration(temperatures=TEMPERATURES))
    calibrated = load_tap_drafter(draft, target)
    assert calibrated.temperatures == TEMPERATURES
    raw_conf, raw_tokens = recorded_confidences(target, raw, temperature)
    cal_conf, cal_tokens = recorded_confidences(target, calibrated, temperature)
    assert cal_tokens == raw_tokens  # FixedK: confidences steer nothing, so the rounds are the same
    assert [c is None for c in cal_conf] == [c is None for c in raw_conf]  # no draft in a request's last round
    pairs = [(c, r) for c, r in zip(cal_conf, raw_conf) if r is not None]
    assert len(pairs) > 10
    for got, before in pairs:
        want = apply_temperatures(np.array(before), TEMPERATURES)
        assert np.array(got) == pytest.approx(want, abs=1e-6)
        # T > 1 pulls a confidence toward 1/2, T < 1 pushes it away, T = 1 leaves it
        for t, g, b in zip(TEMPERATURES, got, before):
            gap, gap_before = abs(g - 0.5), abs(b - 0.5)
            assert gap <= gap_before + 1e-6 if t > 1 else gap >= gap_before - 1e-6
            if t == 1.0:
                assert g == pytest.approx(b, abs=1e-6)


def test_eagle3_takes_no_temperatures_and_a_bad_sidecar_is_an_error(tmp_path, target, reference_drafts):
    eagle = load_tap_drafter(reference_drafts["eagle3"], target)
    assert not hasattr(eagle, "temperatures")
    draft = shutil.copytree(reference_drafts["dspark"], tmp_path / "draft")
    (draft / SIDECAR_NAME).write_text('{"format": "specserve-sts-v1", "temperatures": [0]}')
    with pytest.raises(ModelLoadError, match="temperatures"):
        load_tap_drafter(draft, target)
