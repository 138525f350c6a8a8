"""SDPA that reads grouped K/V heads in place: transformers' "sdpa" copies them per query head.

With an explicit attention mask (every forward of `CausalLM` passes one), transformers' SDPA path
expands each layer's K/V from `num_key_value_heads` to `num_attention_heads` (`repeat_kv`), a full
copy of the sessions' cache per layer per step. `torch.nn.functional.scaled_dot_product_attention`
takes grouped heads directly (`enable_gqa=True`). On the 150 M Qwen3 of `bench/engine_throughput.py`
(12 query / 4 K/V heads) a batched verify of 16 sessions drops from 286 to 245 ms, and the copy is
gone from the profile. Everything this function does not handle (single-query steps, models without
grouped heads, no mask, softcapping, position bias, attention weights asked for) goes to
transformers' own SDPA function unchanged.

Only CPU models switch: on CUDA a masked grouped-head call falls back to SDPA's math kernel. Models
that share K/V across layers (Gemma4 `num_kv_shared_layers`) keep "sdpa": transformers keys code of
theirs on that name.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "specserve_sdpa"


def gqa_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                               value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                               scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    groups = getattr(module, "num_key_value_groups", 1)
    plain = (attention_mask is not None and groups > 1 and query.shape[2] > 1
             and kwargs.get("softcap") is None and kwargs.get("position_bias") is None
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model) -> bool:
    """Switch a CPU transformers model from "sdpa" to the grouped-head SDPA above; False if it stays as it is."""
    if model.config._attn_implementation != "sdpa" or next(model.parameters()).device.type != "cpu":
        return False
    if getattr(model.config.get_text_config(), "num_kv_shared_layers", 0):
        return False
    AttentionInterface.register(NAME, gqa_sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
