"""Tiny random causal LMs built from transformers config classes (no download), for tests."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

ARCHS = ("qwen3", "gemma3", "llama", "qwen3_moe", "gemma4")


def tiny_config(arch: str, vocab: int = 128, layers: int = 4, hidden: int = 64, **overrides):
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  eos_token_id=vocab - 1, bos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    if arch == "qwen3":
        cfg = Qwen3Config(**common)
    elif arch == "llama":
        cfg = LlamaConfig(**common)
    elif arch == "qwen3_moe":
        cfg = Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden)
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(**common, sliding_window=8,
                               layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                                            "full_attention"][:layers] * (layers // 4 or 1))
    elif arch == "gemma4":
        # no per-layer input embeddings: their default table (262144 x 256) makes the tiny model slow to build
        cfg = Gemma4TextConfig(**common, sliding_window=8, global_head_dim=32, hidden_size_per_layer_input=0,
                               layer_types=(["sliding_attention"] * (layers - 1) + ["full_attention"]))
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(arch: str = "qwen3", seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = tiny_config(arch, **kw)
    cls = {"qwen3": Qwen3ForCausalLM, "llama": LlamaForCausalLM, "qwen3_moe": Qwen3MoeForCausalLM,
           "gemma3": Gemma3ForCausalLM, "gemma4": Gemma4ForCausalLM}[arch]
    cfg._attn_implementation = "sdpa"
    model = cls(cfg).eval()
    # random init is near-uniform; sharpen the head so greedy/sampled continuations are non-trivial
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model
