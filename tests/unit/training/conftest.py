"""Fixtures of the training tests: configs of tiny runs (the data set, `train_file`, is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def config_dict(tiny_target_dir, train_file, tmp_path):
    """A tiny DSpark run: 2-layer draft, γ 3, 4 anchors, 4 sequences per step, no progress bar."""
    from transformers import AutoTokenizer

    mask_id = AutoTokenizer.from_pretrained(tiny_target_dir).convert_tokens_to_ids("<|mask|>")
    return {
        "model": {"algorithm": "dspark", "target": str(tiny_target_dir), "num_layers": 2, "block_size": 3,
                  "num_anchors": 4, "mask_token_id": mask_id, "markov_rank": 8},
        "data": {"train_file": str(train_file), "split": "all", "max_length": 64},
        "optim": {"lr": 3e-3},
        "train": {"global_batch_size": 4, "local_batch_size": 2, "max_steps": 4, "seed": 3},
        "checkpoint": {"dir": str(tmp_path / "run"), "every_steps": 2, "export_dtype": "float32"},
        "logging": {"every_steps": 1, "progress": False, "tensorboard": False},
    }
