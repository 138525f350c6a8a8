"""Fixtures of the drafter tests."""

import pytest
import torch
from deepspec_reference import REFERENCE
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="session")
def tiny_qwen3_target():
    """The reference's tiny Qwen3 target (fp32, SDPA), as DeepSpec's evaluator loaded it."""
    return AutoModelForCausalLM.from_pretrained(REFERENCE / "tiny_qwen3_target", dtype=torch.float32,
                                                attn_implementation="sdpa").eval()
