import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    """Tests run tiny models: one intra-op thread is faster than two, and immune to a busy machine
    (with another job running, torch's spinning pool made a [1024, 64] matmul ~100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_target_dir(tmp_path_factory):
    """A tiny Qwen3 saved to disk with a small trained BPE tokenizer: the real loading path."""
    from specserve.demo.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tiny_target")
    text = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "hello world " * 20]
    tokenizer = train_tokenizer(text * 10, vocab_size=300)
    model = tiny_model("qwen3", vocab=len(tokenizer))
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


WORDS = ["def", "add", "return", "print", "import", "os", "hello", "world", "value", "a", "b", "+", "(", ")"]


@pytest.fixture(scope="session")
def train_file(tmp_path_factory):
    """40 short conversations (user shows code, assistant continues) for the tiny target, deterministic."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("train_data") / "train.jsonl"
    rows = []
    for _ in range(40):
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        rows.append({"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
