"""Fixtures of the training tests: a small regenerated-style data set for the tiny target, and configs."""

from __future__ import annotations

import json
import random

import pytest

WORDS = ["def", "add", "return", "print", "import", "os", "hello", "world", "value", "a", "b", "+", "(", ")"]


@pytest.fixture(scope="session")
def train_file(tmp_path_factory):
    """40 short conversations (user shows code, assistant continues), deterministic."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("train_data") / "train.jsonl"
    rows = []
    for _ in range(40):
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        rows.append({"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
