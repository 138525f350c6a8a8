"""The grouped-head SDPA equals transformers' own SDPA, on every architecture the target adapter loads."""

from __future__ import annotations

import pytest
import torch

from specserve.target import attention
from specserve.target.model import CausalLM
from tests.tiny_models import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_grouped_sdpa_matches_transformers_sdpa(arch, monkeypatch):
    reference = CausalLM(tiny_model(arch))
    reference.model.set_attn_implementation("sdpa")
    grouped = CausalLM(tiny_model(arch))
    assert grouped.model.config._attn_implementation == attention.NAME
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k.get("enable_gqa")) or sdpa(*a, **k))
    prompts = {"a": list(range(3, 40)), "b": list(range(50, 61))}  # longer than gemma's sliding window of 8
    outs = {}
    for name, lm in (("reference", reference), ("grouped", grouped)):
        for s, p in prompts.items():
            lm.open(s)
            lm.forward([s], [p])
        outs[name] = lm.forward(list(prompts), [[5, 6, 7], [9]]).logits
    assert True in calls, "the grouped path never ran"
    torch.testing.assert_close(outs["grouped"], outs["reference"], rtol=1e-4, atol=1e-4)


def test_other_attention_implementations_are_left_alone():
    model = tiny_model("qwen3")
    model.set_attn_implementation("eager")
    assert attention.use_gqa_sdpa(model) is False
    assert model.config._attn_implementation == "eager"


def test_models_sharing_kv_across_layers_keep_sdpa():
    """Gemma4's shared-KV layers take a code path that transformers keys on the name "sdpa"."""
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    cfg = Gemma4TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                           sliding_window=8, global_head_dim=32, hidden_size_per_layer_input=0,
                           layer_types=["sliding_attention", "full_attention"] * 2, num_kv_shared_layers=2)
    cfg._attn_implementation = "sdpa"
    model = Gemma4ForCausalLM(cfg).eval()
    assert attention.use_gqa_sdpa(model) is False
    assert model.config._attn_implementation == "sdpa"
    assert CausalLM(model).model.config._attn_implementation == "sdpa"
