"""DraftConfig: parsing and validating DeepSpec draft configs, and writing new ones for a target."""

from __future__ import annotations

import json

import pytest
import torch
from deepspec_reference import REFERENCE
from transformers import Gemma4TextConfig

from specserve.drafters.draft_config import DraftConfig, build_draft_config
from specserve.drafters.layers import Rotary
from specserve.errors import ModelLoadError


def raw_config(folder: str) -> dict:
    return json.loads((REFERENCE / folder / "config.json").read_text())


@pytest.mark.parametrize(("folder", "kind", "family"), [
    ("dspark_rnn/checkpoint", "dspark", "qwen3"), ("dspark_conf_no_markov_feat/checkpoint", "dspark", "qwen3"),
    ("dflash/checkpoint", "dflash", "qwen3"), ("eagle3/checkpoint", "eagle3", "qwen3"),
    ("gemma4/dspark_checkpoint", "dspark", "gemma4"), ("gemma4/eagle3_checkpoint", "eagle3", "gemma4")])
def test_kind_and_family_come_from_the_config(folder, kind, family):
    cfg = DraftConfig.from_dict(raw_config(folder))
    assert (cfg.kind, cfg.family) == (kind, family)


def test_legacy_eagle3_alias_and_legacy_rope_keys_are_understood():
    raw = raw_config("eagle3/checkpoint")
    raw["architectures"] = ["Eagle3DraftModel"]
    del raw["rope_parameters"]
    raw["rope_theta"] = 1_000_000.0  # transformers < 5 wrote RoPE this way
    cfg = DraftConfig.from_dict(raw)
    assert (cfg.kind, cfg.family) == ("eagle3", "qwen3")
    cos, sin = Rotary(cfg)(torch.tensor([[7]]), torch.zeros(1))
    expected = 7.0 / (1_000_000.0 ** (torch.arange(0, 16, 2).float() / 16))
    assert torch.allclose(cos[0, 0, :8], expected.cos()) and torch.allclose(sin[0, 0, :8], expected.sin())


def test_gemma4_draft_config_keeps_the_full_attention_geometry():
    target = Gemma4TextConfig(vocab_size=512, hidden_size=64, num_hidden_layers=8, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, global_head_dim=32, intermediate_size=128,
                              final_logit_softcapping=30.0)
    raw = build_draft_config(target, "dspark", target_layer_ids=[1, 2, 4, 5, 6], num_layers=2, mask_token_id=4,
                             markov_rank=16, block_size=4)
    cfg = DraftConfig.from_dict(raw)
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.final_logit_softcapping) == (32, 2, 30.0)
    assert raw["num_target_layers"] == 8 and raw["layer_types"] == ["full_attention"] * 2
    reference = raw_config("gemma4/dspark_checkpoint")
    for key in ("architectures", "block_size", "mask_token_id", "markov_rank", "markov_head_type",
                "enable_confidence_head", "confidence_head_with_markov", "global_head_dim", "target_layer_ids"):
        assert raw[key] == reference[key], key


def test_architecture_must_match_the_model_type():
    raw = raw_config("dspark_rnn/checkpoint")
    with pytest.raises(ModelLoadError, match="does not match model_type"):
        DraftConfig.from_dict({**raw, "architectures": ["Gemma4DSparkModel"]})


def test_config_errors_name_the_field():
    raw = raw_config("dspark_rnn/checkpoint")
    for field, value in (("markov_head_type", "lstm"), ("mask_token_id", None), ("architectures", ["Foo"])):
        bad = {**raw, field: value}
        with pytest.raises(ModelLoadError, match=field if field != "architectures" else "Foo"):
            DraftConfig.from_dict(bad)
