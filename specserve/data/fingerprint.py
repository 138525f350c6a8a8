"""What target features depend on: the target (config and weights), the tap set, and the tokenizer.

A feature cache records a `TargetFingerprint` in its manifest; a training run computes its own from
the target it loads and refuses a cache whose fingerprint differs. The weight hash samples up to 256
evenly spaced values of every parameter (as float32), which tells apart two checkpoints of one
architecture (a base and an instruct model share a config) without reading gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import torch

from specserve.data.errors import CacheMismatchError

log = logging.getLogger(__name__)

# config keys that do not change what the model computes
_RUNTIME_KEYS = {"transformers_version", "architectures", "dtype", "torch_dtype", "use_cache", "return_dict",
                 "output_hidden_states", "output_attentions", "id2label", "label2id", "problem_type",
                 "chunk_size_feed_forward", "is_encoder_decoder", "tie_word_embeddings"}


@dataclass(frozen=True)
class TargetFingerprint:
    """Identity of the features a target produces. `name` and `dtype` are informative, not compared."""

    name: str
    config_hash: str
    weights_hash: str
    tokenizer_hash: str
    target_layer_ids: tuple[int, ...]
    hidden_size: int
    dtype: str

    def to_json(self) -> dict:
        """As stored in a cache manifest."""
        return {**asdict(self), "target_layer_ids": list(self.target_layer_ids)}

    @classmethod
    def from_json(cls, obj: dict) -> TargetFingerprint:
        """Read back from a cache manifest."""
        return cls(**{**obj, "target_layer_ids": tuple(obj["target_layer_ids"])})

    def check_matches(self, expected: TargetFingerprint) -> None:
        """Raise `CacheMismatchError` naming the first difference from `expected` (self is the cache's)."""
        for field, label in (("config_hash", "target config hash"), ("weights_hash", "target weights hash"),
                             ("target_layer_ids", "target_layer_ids"), ("tokenizer_hash", "tokenizer hash"),
                             ("hidden_size", "hidden size")):
            if getattr(self, field) != getattr(expected, field):
                raise CacheMismatchError(label, getattr(expected, field), getattr(self, field))
        if self.dtype != expected.dtype:
            log.warning("the feature cache was computed with the target in %s; this run loads it in %s",
                        self.dtype, expected.dtype)


def fingerprint(target, target_layer_ids, name: str = "") -> TargetFingerprint:
    """The fingerprint of a loaded `CausalLM` with the given taps."""
    return TargetFingerprint(name=name, config_hash=config_hash(target.config), weights_hash=weights_hash(target.model),
                             tokenizer_hash=tokenizer_hash(target.tokenizer),
                             target_layer_ids=tuple(int(i) for i in target_layer_ids),
                             hidden_size=int(target.hidden_size), dtype=str(target.dtype).removeprefix("torch."))


def config_hash(config) -> str:
    """sha256 of the text config's computation-relevant keys, as canonical JSON."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in raw.items() if not k.startswith("_") and k not in _RUNTIME_KEYS}
    return _sha(json.dumps(kept, sort_keys=True, default=str).encode())


@torch.no_grad()
def weights_hash(model: torch.nn.Module, samples: int = 256) -> str:
    """sha256 over each parameter's name, shape and `samples` evenly spaced values (float32)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary/merges/normaliser and its chat template ("none" without one)."""
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    template = getattr(tokenizer, "chat_template", None) or ""
    return _sha(core.encode() + b"\0" + json.dumps(template, sort_keys=True, default=str).encode())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
