"""Embedded mode: settings from the environment, the three budget policies, the engine factory."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.app import create_app
from services.gateway.embedded import build_embedded_engine
from services.gateway.policy import build_policy
from services.gateway.settings import GatewaySettings
from specserve.decoding.budget import FixedK, PrefixScheduler, StaticThreshold
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.ngram import NgramDrafter


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("SPECSERVE_API_KEYS", "k1, k2")
    monkeypatch.setenv("SPECSERVE_POLICY", "prefix")
    monkeypatch.setenv("SPECSERVE_PORT", "9001")
    settings = GatewaySettings(port=9002)  # flags (init kwargs) win over the environment
    assert settings.api_keys == ["k1", "k2"] and settings.policy == "prefix" and settings.port == 9002
    assert "k1" not in repr(settings)
    assert settings.model_id == "models/demo/target"
    assert GatewaySettings(served_model_name="demo").model_id == "demo"


@pytest.mark.parametrize("bad", [{"policy": "greedy"}, {"n_limit": 10, "max_waiting": 4}, {"threshold": 1.0},
                                 {"unknown": 1}, {"port": -1}])
def test_settings_refuse_bad_values(bad):
    with pytest.raises(ValidationError):
        GatewaySettings(**bad)


def test_build_policy():
    drafter = NgramDrafter(max_block=6)
    assert build_policy(GatewaySettings(), drafter) == PrefixScheduler(6)  # the default
    assert build_policy(GatewaySettings(policy="fixed"), drafter) == FixedK(6)
    assert build_policy(GatewaySettings(policy="fixed", fixed_k=2), drafter) == FixedK(2)
    assert build_policy(GatewaySettings(policy="threshold", threshold=0.4), drafter) == StaticThreshold(0.4, 6)
    assert build_policy(GatewaySettings(policy="prefix"), drafter) == PrefixScheduler(6)
    assert build_policy(GatewaySettings(policy="prefix"), None) == FixedK(0)


@pytest.mark.parametrize("policy", ["threshold", "prefix"])
def test_embedded_engine_policies_keep_greedy_output(tiny_target_dir, policy):
    settings = GatewaySettings(target=str(tiny_target_dir), drafter="ngram", block_size=4, policy=policy, max_batch=4)
    engine = build_embedded_engine(settings)
    if policy == "prefix":
        sps = engine.verifier.load().sps
        assert sps and min(sps) == 1 and all(v > 0 for v in sps.values())
        assert set(engine.verifier.load().plain_sps) == {1, 2, 4}, "plain rounds profiled up to max_batch sessions"
    plain = build_embedded_engine(GatewaySettings(target=str(tiny_target_dir), drafter="none"))
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11]]
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    spec = [r.output_ids for r in engine.generate(prompts, params)]
    assert spec == [r.output_ids for r in plain.generate(prompts, params)]
    assert len(engine.verifier.target.cache) == 0


def test_create_app_needs_one_engine_source():
    with pytest.raises(ValueError):
        create_app(GatewaySettings())
    with pytest.raises(ValueError):
        create_app(GatewaySettings(), engine=object(), engine_factory=lambda s: None)
