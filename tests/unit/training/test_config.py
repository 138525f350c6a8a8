"""Typed configs: YAML/JSON files, dotted overrides, and errors that name the key."""

from __future__ import annotations

import json

import pytest

from specserve.errors import InvalidRequestError
from specserve.training.config import all_keys, load_config

REQUIRED = ["model.target=/models/t", "data.train_file=/data/train.jsonl"]


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  algorithm: eagle3\n  target: /models/t\ndata:\n  train_file: t.jsonl\n"
                    "optim:\n  lr: 1e-3\n")
    cfg = load_config(path, ["optim.lr=3e-4", "model.target_layer_ids=[1, 4, 7]", "train.max_steps=100",
                             "checkpoint.resume=false", "train.threads=null"])
    assert cfg.model.algorithm == "eagle3"
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.target_layer_ids == [1, 4, 7]
    assert cfg.train.max_steps == 100 and cfg.checkpoint.resume is False and cfg.train.threads is None


def test_json_file_and_algorithm_defaults(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"target": "t", "algorithm": "dflash"}, "data": {"train_file": "d"}}))
    cfg = load_config(path)
    assert cfg.alphas() == (1.0, 0.0, 0.0)
    assert load_config(None, REQUIRED).alphas() == (0.1, 0.9, 1.0)
    assert load_config(None, [*REQUIRED, "loss.l1_alpha=0"]).alphas() == (0.1, 0.0, 1.0)


def test_unknown_key_names_it_and_lists_close_matches():
    with pytest.raises(InvalidRequestError, match=r"optim\.lrr: unknown config key; did you mean optim\.lr"):
        load_config(None, [*REQUIRED, "optim.lrr=1"])
    with pytest.raises(InvalidRequestError, match="valid sections"):
        load_config(None, [*REQUIRED, "zzz.qqq=1"])


def test_wrong_types_and_ranges_name_the_key():
    with pytest.raises(InvalidRequestError, match="train.global_batch_size: must be int"):
        load_config(None, [*REQUIRED, "train.global_batch_size=many"])
    with pytest.raises(InvalidRequestError, match="train.local_batch_size: must be >= 1"):
        load_config(None, [*REQUIRED, "train.local_batch_size=0"])
    with pytest.raises(InvalidRequestError, match="model.algorithm: must be one of"):
        load_config(None, [*REQUIRED, "model.algorithm=medusa"])
    with pytest.raises(InvalidRequestError, match="model.target: required"):
        load_config(None, ["data.train_file=x"])
    with pytest.raises(InvalidRequestError, match="--set: expected key=value"):
        load_config(None, ["optim.lr"])


def test_python_config_files_are_refused(tmp_path):
    path = tmp_path / "run.py"
    path.write_text("raise SystemExit('executed')\n")
    with pytest.raises(InvalidRequestError, match="not executed"):
        load_config(path)


def test_every_key_is_listed():
    keys = all_keys()
    assert {"optim.lr", "model.algorithm", "train.global_batch_size", "checkpoint.dir"} <= set(keys)
