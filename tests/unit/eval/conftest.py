import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from specserve.engine.request import RoundRecord


def synthetic_rounds(n: int, gamma: int = 5, overconfidence: float = 1.0, seed: int = 0) -> list[RoundRecord]:
    """Full-block rounds of a head whose logits are `overconfidence` × the true conditional-acceptance logits.

    Slot j is accepted with probability σ(u_j) given all earlier slots were; the head reports σ(s·u_j), so
    s = 1 is perfectly calibrated and s > 1 overconfident, with the ideal STS temperature s at every slot.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(1.0, 1.0, size=(n, gamma))
    accept = rng.uniform(size=(n, gamma)) < 1 / (1 + np.exp(-u))
    accepted = np.where(accept.all(axis=1), gamma, np.argmin(accept, axis=1))
    conf = 1 / (1 + np.exp(-overconfidence * u))
    return [RoundRecord(drafted=gamma, verified=gamma, accepted=int(a), committed=int(a) + 1,
                        confidence=tuple(c.tolist())) for a, c in zip(accepted, conf)]


@pytest.fixture(scope="session")
def make_rounds():
    """Factory for synthetic full-block rounds with confidences (see `synthetic_rounds`)."""
    return synthetic_rounds


REFERENCE = Path(__file__).resolve().parents[2] / "fixtures" / "deepspec_tiny"
SHORT_PROMPTS = ["What is 2 + 3?", "Sort [3, 1, 2].", "def add(a, b):", "Say hello.", "Count to five.",
                 "Name a colour.", "import os", "print(1 + 1)", "What is a list?", "Write a loop."]


@pytest.fixture(scope="session")
def eval_target_dir(tmp_path_factory):
    """The DeepSpec reference tiny Qwen3 target (vocab 512, EOS 510) saved with a small BPE tokenizer and chat
    template, so that the reference DSpark/DFlash/Eagle3 drafts fit it and the protocol's formatting runs."""
    from specserve.demo.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("eval_target")
    shutil.copytree(REFERENCE / "tiny_qwen3_target", path, dirs_exist_ok=True)
    text = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "hello world " * 20]
    tokenizer = train_tokenizer(text * 10, vocab_size=300)
    assert len(tokenizer) <= 512
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory):
    """Two benchmark files of short prompts ("math" and "chat"); returns their paths."""
    folder = tmp_path_factory.mktemp("suite")
    paths = []
    for name, prompts in (("math", SHORT_PROMPTS), ("chat", SHORT_PROMPTS[::-1])):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"turns": [p, "a second turn is ignored"]}) + "\n" for p in prompts))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def reference_drafts():
    """Checkpoint folders of the DeepSpec reference drafts of the reference target: dspark (rnn), dflash, eagle3."""
    return {kind: REFERENCE / folder / "checkpoint" for kind, folder in
            (("dspark", "dspark_rnn"), ("dflash", "dflash"), ("eagle3", "eagle3"))}
