from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parents[2] / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny target is far too small to gain from intra-op threads, and on a loaded 2-core machine
    torch's thread pool makes each forward ~100x slower (see tests/unit/engine/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def target(tiny_target_dir):
    """The tiny Qwen3 target loaded the way the CLI loads it (with its tokenizer)."""
    from specserve.target.model import CausalLM

    return CausalLM.from_pretrained(str(tiny_target_dir))


@pytest.fixture(scope="session")
def chat_rows():
    from specserve.data.prompts import read_prompts

    return read_prompts(FIXTURES / "chat.jsonl").rows


@pytest.fixture(scope="session")
def prompt_rows():
    from specserve.data.prompts import read_prompts

    return read_prompts(FIXTURES / "prompts.jsonl").rows
