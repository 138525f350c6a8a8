"""Decoder-layer building blocks of the draft models, for Qwen3-, Gemma4- and Gemma3-family targets.

The norms, MLPs, rotary embeddings and scaled embeddings are transformers' own classes, so a draft
computes exactly what its target's layers compute. What is new here is the attention plumbing the
drafts need: queries and keys/values are projected separately (a DSpark block query attends to
context keys that never produce a query; an Eagle3 step attends to cached keys), and the attention
call accepts an arbitrary boolean mask with rows that may see nothing at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.gemma3.modeling_gemma3 import (
    Gemma3MLP,
    Gemma3RMSNorm,
    Gemma3RotaryEmbedding,
    Gemma3TextScaledWordEmbedding,
)
from transformers.models.gemma4.modeling_gemma4 import (
    Gemma4RMSNorm,
    Gemma4TextMLP,
    Gemma4TextRotaryEmbedding,
    Gemma4TextScaledWordEmbedding,
)
from transformers.models.gemma4.modeling_gemma4 import apply_rotary_pos_emb as apply_rope  # one tensor at a time
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding

from specserve.drafters.draft_config import DraftConfig


def rms_norm(cfg: DraftConfig, dim: int, with_scale: bool = True) -> nn.Module:
    """The family's RMSNorm (Gemma3 scales by 1 + w, Gemma4 and Qwen3 by w; Gemma4 may be scale-free)."""
    if cfg.family == "gemma4":
        return Gemma4RMSNorm(dim, eps=cfg.rms_norm_eps, with_scale=with_scale)
    if not with_scale:
        raise ValueError(f"scale-free RMSNorm only exists in Gemma4 layers, not {cfg.family}")
    if cfg.family == "gemma3":
        return Gemma3RMSNorm(dim, eps=cfg.rms_norm_eps)
    return Qwen3RMSNorm(dim, eps=cfg.rms_norm_eps)


def token_embedding(cfg: DraftConfig) -> nn.Embedding:
    """The frozen target embedding; Gemma multiplies it by sqrt(hidden_size) on lookup."""
    if cfg.family == "qwen3":
        return nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
    cls = Gemma4TextScaledWordEmbedding if cfg.family == "gemma4" else Gemma3TextScaledWordEmbedding
    return cls(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id, embed_scale=cfg.hidden_size**0.5)


def mlp(cfg: DraftConfig, layer_idx: int) -> nn.Module:
    """SwiGLU (Qwen3) or GeGLU-tanh (Gemma) feed-forward with gate/up/down projections."""
    hf = cfg.hf_config()
    if cfg.family == "gemma4":
        return Gemma4TextMLP(hf, layer_idx)
    if cfg.family == "gemma3":
        return Gemma3MLP(hf)
    return Qwen3MLP(hf)


def softcap(cfg: DraftConfig, logits: torch.Tensor) -> torch.Tensor:
    """Gemma's final-logit soft-capping, tanh(x / c) * c; identity when the config sets none."""
    cap = cfg.final_logit_softcapping
    return logits if cap is None else torch.tanh(logits / cap) * cap


class Rotary(nn.Module):
    """The target's RoPE for full-attention layers: position ids [B, T] -> (cos, sin) [B, T, head_dim]."""

    def __init__(self, cfg: DraftConfig):
        super().__init__()
        hf = cfg.hf_config()
        if cfg.family == "gemma4":
            self.inner, self.layer_type = Gemma4TextRotaryEmbedding(hf), "full_attention"
        elif cfg.family == "gemma3":
            self.inner, self.layer_type = Gemma3RotaryEmbedding(hf), "full_attention"
        else:
            self.inner, self.layer_type = Qwen3RotaryEmbedding(hf), None

    def forward(self, position_ids: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layer_type is None:
            return self.inner(like, position_ids)
        return self.inner(like, position_ids, self.layer_type)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Scaled dot-product attention with grouped KV heads; q [B, h, Q, d], k/v [B, kvh, K, d], mask [B, 1, Q, K].

    A query row whose mask is all False (a dummy training block, a padded query) outputs zeros, as
    flex attention does; the row is routed to every key before SDPA so no NaN reaches the backward pass.
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    visible = mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~visible, scale=scale, enable_gqa=True)
    return out.masked_fill(~visible, 0.0)


class DraftAttention(nn.Module):
    """q/k/v/o projections with per-head q/k norms (plus Gemma4's scale-free v norm and K = V option).

    `in_features` is the hidden size for DSpark layers and twice that for Eagle3's [embedding; hidden]
    input. Keys and values come back normed and rotated, ready to be cached.
    """

    def __init__(self, cfg: DraftConfig, in_features: int):
        super().__init__()
        self.cfg = cfg
        d, bias = cfg.head_dim, cfg.attention_bias
        self.q_proj = nn.Linear(in_features, cfg.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(in_features, cfg.num_kv_heads * d, bias=bias)
        self.v_proj = None if cfg.k_eq_v else nn.Linear(in_features, cfg.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, cfg.hidden_size, bias=bias)
        self.q_norm = rms_norm(cfg, d)
        self.k_norm = rms_norm(cfg, d)
        self.v_norm = rms_norm(cfg, d, with_scale=False) if cfg.family == "gemma4" else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], x.shape[-1] // self.cfg.head_dim, self.cfg.head_dim)  # also when T = 0

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, in] -> rotated queries [B, heads, T, d]."""
        q = self.q_norm(self._heads(self.q_proj(x))).transpose(1, 2)
        return apply_rope(q, cos, sin)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, in] -> rotated keys and values [B, kv_heads, T, d]."""
        k = self._heads(self.k_proj(x))
        v = k if self.v_proj is None else self._heads(self.v_proj(x))
        if self.v_norm is not None:
            v = self.v_norm(v)
        k = self.k_norm(k).transpose(1, 2)
        return apply_rope(k, cos, sin), v.transpose(1, 2)

    def output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attend and project back: [B, heads, Q, d] -> [B, Q, hidden]."""
        out = attend(q, k, v, mask, self.cfg.attention_scale)
        return self.o_proj(out.transpose(1, 2).reshape(*q.shape[:1], q.shape[2], -1))


class DecoderLayerBase(nn.Module):
    """What every draft layer shares after its attention: the attention residual and the feed-forward.

    Qwen3 is pre-norm (`post_attention_layernorm` normalises the MLP input). Gemma uses sandwich norms:
    `post_attention_layernorm` on the attention output, `pre_/post_feedforward_layernorm` around the MLP,
    and Gemma4 multiplies the layer output by its persistent `layer_scalar` buffer.
    """

    def __init__(self, cfg: DraftConfig, layer_idx: int, attn_in_features: int):
        super().__init__()
        self.cfg = cfg
        self.self_attn = DraftAttention(cfg, attn_in_features)
        self.mlp = mlp(cfg, layer_idx)
        self.post_attention_layernorm = rms_norm(cfg, cfg.hidden_size)
        self.sandwich = cfg.family != "qwen3"
        if self.sandwich:
            self.pre_feedforward_layernorm = rms_norm(cfg, cfg.hidden_size)
            self.post_feedforward_layernorm = rms_norm(cfg, cfg.hidden_size)
        if cfg.family == "gemma4":
            self.register_buffer("layer_scalar", torch.ones(1))

    def finish(self, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """residual + attention, then the feed-forward residual."""
        if self.sandwich:
            x = residual + self.post_attention_layernorm(attn_out)
            x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        else:
            x = residual + attn_out
            x = x + self.mlp(self.post_attention_layernorm(x))
        if self.cfg.family == "gemma4":
            x = x * self.layer_scalar
        return x
