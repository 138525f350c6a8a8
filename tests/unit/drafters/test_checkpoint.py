"""Checkpoint I/O and the linter: DeepSpec layouts load, save round-trips, mismatches are refused by name."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from deepspec_reference import QWEN3_DSPARK, REFERENCE, summary, tensors
from transformers import AutoConfig, Gemma4TextConfig, Qwen3Config

from specserve.drafters import checkpoint
from specserve.drafters.checkpoint import (
    detect_kind,
    expected_shapes,
    lint,
    load_drafter,
    save_drafter,
    weight_shapes,
)
from specserve.drafters.draft_config import DraftConfig, build_draft_config
from specserve.drafters.draft_kv_cache import DraftKVCache
from specserve.drafters.dspark import BlockInput
from specserve.errors import IncompatibleDrafterError, ModelLoadError

QWEN3_FOLDERS = {**{v: f"{v}/checkpoint" for v in QWEN3_DSPARK}, "eagle3": "eagle3/checkpoint"}
KINDS = {"dflash": "dflash", "eagle3": "eagle3"}

# public Qwen3 configs (hidden, layers, heads, kv heads, intermediate), written by hand: nothing is downloaded
QWEN3_TARGETS = {"Qwen3-4B": (2560, 36, 32, 8, 9728), "Qwen3-8B": (4096, 36, 32, 8, 12288),
                 "Qwen3-14B": (5120, 40, 40, 8, 17408)}
TAPS = {36: [1, 9, 17, 25, 33], 40: [1, 10, 19, 28, 37]}


@pytest.fixture(scope="module")
def target_config():
    return AutoConfig.from_pretrained(REFERENCE / "tiny_qwen3_target")


def qwen3_target(name: str) -> Qwen3Config:
    hidden, layers, heads, kv_heads, intermediate = QWEN3_TARGETS[name]
    return Qwen3Config(vocab_size=151936, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, head_dim=128, intermediate_size=intermediate,
                       max_position_embeddings=40960, rope_theta=1_000_000, rms_norm_eps=1e-6,
                       tie_word_embeddings=False)


@pytest.mark.parametrize("variant", list(QWEN3_FOLDERS))
def test_every_reference_checkpoint_loads_with_its_layout_and_kind(variant, target_config):
    folder = REFERENCE / QWEN3_FOLDERS[variant]
    model = load_drafter(folder, target_config=target_config)
    listed = summary(f"{variant}/summary.json").get("state_dict")
    if listed is not None:
        assert {k: tuple(v[0]) for k, v in listed.items()} == {k: tuple(t.shape) for k, t in model.state_dict().items()}
    assert detect_kind(folder) == KINDS.get(variant, "dspark")
    assert not any(p.requires_grad for p in model.parameters())


def test_gemma4_checkpoints_load_against_a_gemma4_target():
    target = Gemma4TextConfig(vocab_size=512, hidden_size=64, num_hidden_layers=8, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, global_head_dim=32, intermediate_size=128)
    for name in ("dspark_checkpoint", "eagle3_checkpoint"):
        model = load_drafter(REFERENCE / "gemma4" / name, target_config=target)
        listed = summary("gemma4/summary.json")[name.split("_")[0]]["state_dict"]
        assert {k: tuple(v[0]) for k, v in listed.items()} == {k: tuple(t.shape) for k, t in model.state_dict().items()}


@pytest.mark.parametrize("sharded", [False, True])
def test_save_round_trip_without_frozen_head_fills_it_from_the_target(tmp_path, sharded, tiny_qwen3_target):
    model = load_drafter(REFERENCE / "dspark_rnn" / "checkpoint")
    save_drafter(model, tmp_path, include_frozen=False, max_shard_size=200_000 if sharded else None)
    assert (tmp_path / checkpoint.INDEX_FILE).exists() == sharded
    assert "lm_head.weight" not in weight_shapes(tmp_path)
    with pytest.raises(ModelLoadError, match="embed_tokens.weight"):
        load_drafter(tmp_path)
    reloaded = load_drafter(tmp_path, target_model=tiny_qwen3_target)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    inputs = tensors("inputs.safetensors")
    a = model.draft_block([BlockInput(DraftKVCache(2), inputs["target_hidden_states"][0, :20], 161)])
    b = reloaded.draft_block([BlockInput(DraftKVCache(2), inputs["target_hidden_states"][0, :20], 161)])
    assert torch.equal(a.hidden, b.hidden)


def test_hub_ids_go_through_snapshot_download(monkeypatch, tmp_path):
    local = tmp_path / "snapshot"
    shutil.copytree(REFERENCE / "eagle3" / "checkpoint", local)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append(repo_id)
        return str(local)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_drafter("deepseek-ai/eagle3_qwen3_8b_ttt7")
    assert calls == ["deepseek-ai/eagle3_qwen3_8b_ttt7"] and model.cfg.kind == "eagle3"


@pytest.mark.parametrize("entry", ["dflash_Qwen3-4B", "dflash_Qwen3-8B", "dflash_Qwen3-14B", "dspark_Qwen3-4B",
                                   "dspark_Qwen3-8B", "dspark_Qwen3-14B", "eagle3_Qwen3-4B", "eagle3_Qwen3-8B",
                                   "eagle3_Qwen3-14B"])
def test_real_scale_layouts_are_accepted(entry):
    """The released drafts' keys and shapes, for the matching hand-built target config, pass the linter."""
    ref = json.loads((REFERENCE / "real_scale_state_dict_shapes.json").read_text())[entry]
    kind, target_name = entry.split("_")
    target = qwen3_target(target_name)
    raw = build_draft_config(target, kind, target_layer_ids=TAPS[target.num_hidden_layers],
                             num_layers=ref["num_layers"], mask_token_id=151669)
    cfg = DraftConfig.from_dict(raw)
    released = {}  # the reference lists layer 0; every layer has the same keys
    for key, shape in ref["keys"].items():
        if key.startswith("layers.0."):
            for i in range(ref["num_layers"]):
                released[key.replace("layers.0.", f"layers.{i}.", 1)] = tuple(shape)
        else:
            released[key] = tuple(shape)
    assert expected_shapes(cfg) == released
    assert sum(torch.Size(s).numel() for s in released.values()) == ref["total_params"]
    lint(cfg, target, released)


def tiny_draft(name: str = "dspark_rnn") -> tuple[DraftConfig, dict]:
    folder = REFERENCE / QWEN3_FOLDERS[name]
    return DraftConfig.from_dict(json.loads((folder / "config.json").read_text())), weight_shapes(folder)


def edited(cfg: DraftConfig, **changes) -> DraftConfig:
    raw = copy.deepcopy(cfg.raw)
    raw.update(changes)
    return DraftConfig.from_dict(raw)


@pytest.mark.parametrize(("changes", "target_changes", "needles"), [
    ({"vocab_size": 1024}, {}, ["vocab_size", "1024", "512"]),
    ({}, {"vocab_size": 600}, ["vocab_size", "512", "600"]),
    ({}, {"hidden_size": 128, "head_dim": 32}, ["hidden_size", "64", "128"]),
    ({"num_target_layers": 36}, {}, ["num_target_layers", "36", "8"]),
    ({}, {"num_hidden_layers": 6}, ["target_layer_ids", "[1, 2, 4, 5, 6]", "6 layers"]),
    ({"target_layer_ids": [1, 2, 4, 5, 7]}, {}, ["target_layer_ids", "[7]", "final layer 7"]),
    ({"target_layer_ids": [1, 4, 2, 5, 6]}, {}, ["target_layer_ids", "strictly increasing"]),
    ({"mask_token_id": 512}, {}, ["mask_token_id", "512", "vocab_size is 512"]),
])
def test_linter_rejects_config_mismatches_by_field(changes, target_changes, needles, target_config):
    cfg, _ = tiny_draft()
    target = copy.deepcopy(target_config)
    for key, value in target_changes.items():
        setattr(target, key, value)
    with pytest.raises(IncompatibleDrafterError) as err:
        lint(edited(cfg, **changes), target)
    for needle in needles:
        assert needle in str(err.value)


def test_linter_accepts_the_embedding_tap_only_for_parallel_drafts(target_config):
    cfg, _ = tiny_draft()
    lint(edited(cfg, target_layer_ids=[-1, 2, 4, 5, 6]), target_config)
    eagle, _ = tiny_draft("eagle3")
    with pytest.raises(IncompatibleDrafterError, match=r"target_layer_ids: \[-1, 2, 4, 5, 6\] contains -1"):
        lint(edited(eagle, target_layer_ids=[-1, 2, 4, 5, 6]), target_config)


def test_linter_rejects_missing_misnamed_unexpected_and_misshapen_weights(target_config):
    cfg, shapes = tiny_draft()
    lint(cfg, target_config, shapes)
    missing = {k: v for k, v in shapes.items() if k != "layers.1.mlp.up_proj.weight"}
    with pytest.raises(IncompatibleDrafterError, match=r"'layers\.1\.mlp\.up_proj\.weight' is missing"):
        lint(cfg, target_config, missing)
    misnamed = {**missing, "layers.1.mlp.upproj.weight": shapes["layers.1.mlp.up_proj.weight"]}
    with pytest.raises(IncompatibleDrafterError, match=r"checkpoint has 'layers\.1\.mlp\.upproj\.weight': misnamed"):
        lint(cfg, target_config, misnamed)
    with pytest.raises(IncompatibleDrafterError, match=r"unexpected key 'markov_head\.gate_proj\.weight'"):
        lint(cfg, target_config, {**shapes, "markov_head.gate_proj.weight": (16, 80)})
    with pytest.raises(IncompatibleDrafterError, match=r"fc\.weight has shape \(64, 256\), config expects \(64, 320\)"):
        lint(cfg, target_config, {**shapes, "fc.weight": (64, 256)})
    with pytest.raises(IncompatibleDrafterError, match="'model.' prefix"):
        lint(cfg, target_config, {f"model.{k}": v for k, v in shapes.items()})
    # the frozen copies may be absent (filled from the target), but never the wrong shape
    lint(cfg, target_config, {k: v for k, v in shapes.items() if k not in checkpoint.FROZEN_KEYS})
    with pytest.raises(IncompatibleDrafterError, match=r"lm_head\.weight has shape \(500, 64\)"):
        lint(cfg, target_config, {**shapes, "lm_head.weight": (500, 64)})


def test_load_refuses_a_checkpoint_whose_config_disagrees_with_its_weights(tmp_path):
    shutil.copytree(REFERENCE / "dspark_markov_gated" / "checkpoint", tmp_path, dirs_exist_ok=True)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["markov_head_type"] = "vanilla"  # the weights carry a gate the config no longer declares
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(IncompatibleDrafterError, match=r"unexpected key 'markov_head\.gate_proj\.weight'"):
        load_drafter(tmp_path)
