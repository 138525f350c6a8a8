"""Training from an offline cache: the same weights as online features, and a cache for other taps is refused."""

from __future__ import annotations

import copy

import pytest
import torch

from specserve.data.cache_writer import build_cache
from specserve.data.errors import CacheMismatchError
from specserve.data.prompts import read_prompts
from specserve.data.storage import StorageMode
from specserve.data.tokenization import ChatTokenizer, tokenize_rows
from specserve.target.model import CausalLM
from specserve.training.config import from_dict
from specserve.training.trainer import Trainer


def make_cache(tiny_target_dir, train_file, out, layers):
    target = CausalLM.from_pretrained(str(tiny_target_dir))
    rows = tokenize_rows(read_prompts(train_file).rows, ChatTokenizer(target.tokenizer, 64), str(train_file))
    build_cache(target, rows, out, layers, StorageMode("fp32", "fp32"), progress=False)


def test_fp32_cache_trains_exactly_like_online_features(config_dict, tiny_target_dir, train_file, tmp_path):
    make_cache(tiny_target_dir, train_file, tmp_path / "cache", (0, 1, 2))
    online = Trainer(from_dict(config_dict))
    online.train()
    cached_cfg = copy.deepcopy(config_dict)
    cached_cfg["data"].update(source="cache", cache=str(tmp_path / "cache"))
    cached_cfg["checkpoint"]["dir"] = str(tmp_path / "cached_run")
    cached = Trainer(from_dict(cached_cfg))
    cached.train()
    a, b = online.model.state_dict(), cached.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_for_another_tap_set_is_refused(config_dict, tiny_target_dir, train_file, tmp_path):
    make_cache(tiny_target_dir, train_file, tmp_path / "cache", (0, 2))
    raw = copy.deepcopy(config_dict)
    raw["data"].update(source="cache", cache=str(tmp_path / "cache"))
    with pytest.raises(CacheMismatchError, match="target_layer_ids"):
        Trainer(from_dict(raw))
