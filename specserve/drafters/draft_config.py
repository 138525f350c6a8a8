"""The typed view of a DeepSpec-format draft `config.json` (DSpark, DFlash, Eagle3).

A DeepSpec draft config is the target's text config deep-copied plus a few draft fields
(algorithms.md sections 3 and 4). `DraftConfig` validates those fields once, at load, and keeps the
raw dictionary so that a save writes back exactly what was read. `build_draft_config` goes the other
way: from a target config to a fresh draft config dictionary, the way DeepSpec writes one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from transformers import Gemma3TextConfig, Gemma4TextConfig, PretrainedConfig, Qwen3Config

from specserve.errors import ModelLoadError

# architecture name -> drafter algorithm; the target family comes from `model_type`
ARCHITECTURES = {
    "Qwen3DSparkModel": "dspark",
    "Gemma4DSparkModel": "dspark",
    "Gemma3DSparkModel": "dspark",  # specserve's name for Gemma3-target drafts (DeepSpec ships none)
    "Qwen3Eagle3Model": "eagle3",
    "Gemma4Eagle3Model": "eagle3",
    "Gemma3Eagle3Model": "eagle3",
    "Eagle3DraftModel": "eagle3",  # legacy alias DeepSpec's evaluator still accepts
}
FAMILIES = {"qwen3": "qwen3", "gemma4_text": "gemma4", "gemma3_text": "gemma3"}
_HF_CONFIGS = {"qwen3": Qwen3Config, "gemma4": Gemma4TextConfig, "gemma3": Gemma3TextConfig}
MARKOV_HEADS = ("vanilla", "gated", "rnn")
KINDS = ("dspark", "dflash", "eagle3")


def _require(raw: dict, name: str) -> Any:
    if raw.get(name) is None:
        raise ModelLoadError(f"draft config.json: field {name!r} is required but missing")
    return raw[name]


@dataclass(frozen=True)
class DraftConfig:
    """Validated draft config. `kind` is dspark, dflash (DSpark without sequential/confidence heads) or eagle3."""

    kind: str
    family: str  # qwen3 | gemma4 | gemma3: decides norms, RoPE, embedding scale, soft-capping
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    attention_bias: bool
    target_layer_ids: tuple[int, ...]
    num_target_layers: int
    pad_token_id: int | None = None
    # DSpark / DFlash
    block_size: int = 0
    mask_token_id: int | None = None
    markov_rank: int = 0
    markov_head_type: str | None = None
    confidence_head: bool = False
    confidence_with_markov: bool = False
    # Eagle3
    ttt_length: int = 0
    # Gemma
    k_eq_v: bool = False
    final_logit_softcapping: float | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_taps(self) -> int:
        return len(self.target_layer_ids)

    @property
    def attention_scale(self) -> float:
        """Gemma4 folds the scale into q/k norms (1.0); Gemma3 uses query_pre_attn_scalar; Qwen3 1/sqrt(d)."""
        if self.family == "gemma4":
            return 1.0
        if self.family == "gemma3":
            return float(self.raw.get("query_pre_attn_scalar") or self.head_dim) ** -0.5
        return self.head_dim**-0.5

    @property
    def max_block(self) -> int:
        return self.ttt_length if self.kind == "eagle3" else self.block_size

    @classmethod
    def from_dict(cls, raw: dict) -> DraftConfig:
        """Parse and validate a draft `config.json` dictionary; errors name the offending field."""
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(f"draft config.json: architectures {archs!r} name no known drafter; "
                                 f"expected one of {sorted(ARCHITECTURES)}")
        model_type = raw.get("model_type")
        if model_type not in FAMILIES:
            raise ModelLoadError(f"draft config.json: model_type {model_type!r} is not supported; "
                                 f"expected one of {sorted(FAMILIES)}")
        family = FAMILIES[model_type]
        if not arch.startswith("Eagle3") and not arch.lower().startswith(family):
            raise ModelLoadError(f"draft config.json: architecture {arch!r} does not match model_type {model_type!r}")
        kind = ARCHITECTURES[arch]
        hidden = int(_require(raw, "hidden_size"))
        heads = int(_require(raw, "num_attention_heads"))
        head_dim = int(raw.get("head_dim") or hidden // heads)
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        k_eq_v = bool(raw.get("attention_k_eq_v", False))
        if family == "gemma4":
            # DeepSpec's Gemma4 drafts use the target's full-attention ("global") geometry in every layer
            head_dim = int(raw.get("global_head_dim") or head_dim)
            if k_eq_v:
                kv_heads = int(_require(raw, "num_global_key_value_heads"))
        common = dict(
            family=family, architecture=arch, vocab_size=int(_require(raw, "vocab_size")), hidden_size=hidden,
            intermediate_size=int(_require(raw, "intermediate_size")),
            num_layers=int(_require(raw, "num_hidden_layers")), num_heads=heads, num_kv_heads=kv_heads,
            head_dim=head_dim, rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(raw.get("attention_bias", False)),
            target_layer_ids=tuple(int(i) for i in _require(raw, "target_layer_ids")),
            num_target_layers=int(_require(raw, "num_target_layers")), pad_token_id=raw.get("pad_token_id"),
            k_eq_v=k_eq_v, final_logit_softcapping=raw.get("final_logit_softcapping"), raw=copy.deepcopy(raw))
        if family == "qwen3" and k_eq_v:
            raise ModelLoadError("draft config.json: attention_k_eq_v is only defined for Gemma4 drafts")
        if heads % kv_heads:
            raise ModelLoadError(f"draft config.json: num_attention_heads {heads} is not a multiple of the "
                                 f"key/value head count {kv_heads}")
        if kind == "eagle3":
            return cls(kind="eagle3", ttt_length=int(_require(raw, "ttt_length")), **common)
        return cls._dspark(raw, common)

    @classmethod
    def _dspark(cls, raw: dict, common: dict) -> DraftConfig:
        rank = int(_require(raw, "markov_rank"))
        confidence = bool(_require(raw, "enable_confidence_head"))
        head_type = None
        if rank > 0:
            head_type = str(_require(raw, "markov_head_type")).lower()
            if head_type not in MARKOV_HEADS:
                raise ModelLoadError(f"draft config.json: markov_head_type {head_type!r} is not one of {MARKOV_HEADS}")
        with_markov = bool(_require(raw, "confidence_head_with_markov")) if confidence else False
        if with_markov and rank == 0:
            raise ModelLoadError("draft config.json: confidence_head_with_markov needs markov_rank > 0")
        block = int(_require(raw, "block_size"))
        if block < 1:
            raise ModelLoadError(f"draft config.json: block_size must be >= 1, got {block}")
        kind = "dspark" if rank > 0 or confidence else "dflash"
        return cls(kind=kind, block_size=block, mask_token_id=int(_require(raw, "mask_token_id")),
                   markov_rank=rank, markov_head_type=head_type, confidence_head=confidence,
                   confidence_with_markov=with_markov, **common)

    def hf_config(self) -> PretrainedConfig:
        """The transformers text config of the draft's layers (RoPE and MLP building blocks read it)."""
        # the whole dictionary goes in: legacy keys such as `rope_theta`/`rope_scaling` are only understood
        # as constructor arguments, and dropping them would silently fall back to the default RoPE
        kwargs = {k: v for k, v in self.raw.items() if k not in ("architectures", "transformers_version")}
        kwargs["layer_types"] = ["full_attention"] * self.num_layers
        return _HF_CONFIGS[self.family](**kwargs)


def build_draft_config(target_config: PretrainedConfig | dict, kind: str, *, target_layer_ids, num_layers: int,
                       block_size: int = 7, mask_token_id: int | None = None, markov_rank: int = 256,
                       markov_head_type: str = "vanilla", confidence_head: bool = True,
                       confidence_with_markov: bool = True, num_anchors: int = 512, ttt_length: int = 7,
                       step_loss_decay: float = 0.8, target_name_or_path: str = "") -> dict:
    """A new draft `config.json` dictionary for `target_config`, laid out as DeepSpec writes it.

    DFlash is `kind="dflash"` (markov_rank 0, no confidence head) and keeps the DSpark architecture name.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    text = target_config.get_text_config() if isinstance(target_config, PretrainedConfig) else None
    raw = copy.deepcopy(text.to_dict() if text is not None else target_config)
    family = FAMILIES.get(raw.get("model_type"))
    if family is None:
        raise ValueError(f"target model_type {raw.get('model_type')!r} has no draft family; "
                         f"expected one of {sorted(FAMILIES)}")
    prefix = {"qwen3": "Qwen3", "gemma4": "Gemma4", "gemma3": "Gemma3"}[family]
    if family == "gemma4" and text is not None:
        # transformers folds these into per_layer_config; DeepSpec's config.json keeps them top-level
        full = text.per_layer_config[text.layer_types.index("full_attention")]
        raw.setdefault("global_head_dim", full.head_dim)
        raw.setdefault("num_global_key_value_heads", full.num_key_value_heads)
        raw.pop("per_layer_config", None)
    raw.update(num_target_layers=int(raw["num_hidden_layers"]), num_hidden_layers=int(num_layers),
               layer_types=["full_attention"] * int(num_layers), target_layer_ids=[int(i) for i in target_layer_ids],
               tie_word_embeddings=False)
    if kind == "eagle3":
        raw.update(architectures=[f"{prefix}Eagle3Model"], ttt_length=int(ttt_length),
                   step_loss_decay=float(step_loss_decay), draft_num_hidden_layers=int(num_layers),
                   target_model_name_or_path=target_name_or_path)
        return raw
    if mask_token_id is None:
        raise ValueError("mask_token_id is required for DSpark/DFlash drafts")
    if kind == "dflash":
        markov_rank, confidence_head = 0, False
    raw.update(architectures=[f"{prefix}DSparkModel"], block_size=int(block_size), mask_token_id=int(mask_token_id),
               num_anchors=int(num_anchors), enable_confidence_head=bool(confidence_head),
               markov_rank=int(markov_rank))
    if confidence_head:
        raw["confidence_head_with_markov"] = bool(confidence_with_markov)
    if markov_rank > 0:
        raw["markov_head_type"] = markov_head_type
    return raw
