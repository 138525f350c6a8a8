"""The target adapter: any transformers causal LM, batched over ragged sessions with a slot KV cache.

One `forward` call appends a different number of tokens to each of R sessions of different lengths:
queries are right-padded to the longest, positions are per session, and a boolean [R, 1, T, K] mask
(one per attention type, so Gemma's sliding-window layers keep their window) lets each query see
exactly its own session's history. Truncating a session to any committed length is free.

Taps (raw outputs of chosen decoder layers, HF `hidden_states[l + 1]`) are captured with forward hooks
on just those layers, so the other layers' states are never kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from specserve.cpu_linear import real_rows, use_cpu_linears
from specserve.errors import ContextLengthError, ModelLoadError
from specserve.target.attention import use_gqa_sdpa
from specserve.target.kv_cache import SlotKVCache

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_SUPPORTED_ATTENTION = {"full_attention", "sliding_attention"}
# What a padded row of a ragged forward costs, in real tokens. The CPU linears skip padded rows (specserve.cpu_linear);
# attention, norms and the sampler do not. Demo target, 4 sessions verifying 16 tokens: 11.1 ms as 4+4+4+4, 12.2 ms as
# 5+4+4+3 (padded to 20), 12.7 ms as 7+5+3+1 (padded to 28); the profiled forward is 10.4 ms for 16 tokens, 13.5 for 28.
# Without them (another device or dtype) a padded row costs what a real one does.
PADDED_ROW_COST_CPU_LINEARS = 0.5


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [R, T, V] (padded), or [R, V] at each session's last new token
    taps: torch.Tensor | None  # [R, T, m*H] (padded) when taps were asked for
    final_hidden: torch.Tensor | None  # [R, T, H] after the final norm, when asked for


class CausalLM:
    """A frozen causal LM with per-session KV caches. Not thread-safe: one forward at a time."""

    def __init__(self, model: nn.Module, tokenizer=None, max_len: int | None = None, cpu_linears: bool = True):
        self.model = model.eval().requires_grad_(False)
        # fp32 CPU: few-row products as (W · xᵀ)ᵀ, padded rows skipped (specserve.cpu_linear)
        switched = use_cpu_linears(self.model) if cpu_linears else 0
        self.padding_cost = PADDED_ROW_COST_CPU_LINEARS if switched else 1.0  # a padded row, in real tokens
        use_gqa_sdpa(self.model)  # grouped K/V heads read in place, not copied per query head
        self.tokenizer = tokenizer
        self.config = model.config.get_text_config()
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        n_layers = self.config.num_hidden_layers
        self.layer_types = list(getattr(self.config, "layer_types", None) or ["full_attention"] * n_layers)
        unknown = set(self.layer_types) - _SUPPORTED_ATTENTION
        if unknown:
            raise ModelLoadError(f"layer types {sorted(unknown)} are not supported (only {_SUPPORTED_ATTENTION})")
        self.sliding_window = getattr(self.config, "sliding_window", None)
        self.max_context = max_len or int(getattr(self.config, "max_position_embeddings", 1 << 30))
        self.cache = SlotKVCache(self.dtype, self.device)
        self._captured: dict[int, torch.Tensor] = {}
        self._hooked: set[int] = set()

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32", device: str = "cpu",
                        max_len: int | None = None, load_tokenizer: bool = True) -> CausalLM:
        """Load a causal LM (and its tokenizer, when it has one) from a local path or a hub id."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ModelLoadError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        try:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=_DTYPES[dtype],
                                                         attn_implementation="sdpa")
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load a causal LM from {name_or_path!r}: {exc}") from exc
        tokenizer = None
        if load_tokenizer:
            try:
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            except (OSError, ValueError, KeyError, TypeError):
                tokenizer = None  # a bare checkpoint: token ids in, token ids out
        return cls(model.to(device), tokenizer, max_len=max_len)

    # ---- facts about the model ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), getattr(self.config, "eos_token_id", None)):
            if source is not None:
                ids.extend([source] if isinstance(source, int) else source)
        return tuple(dict.fromkeys(ids))

    # ---- sessions -------------------------------------------------------------------------------
    def open(self, session: str) -> None:
        self.cache.open(session)

    def close(self, session: str) -> None:
        self.cache.close(session)

    def length(self, session: str) -> int:
        return self.cache.length(session)

    def truncate(self, session: str, length: int) -> None:
        self.cache.truncate(session, length)

    # ---- the forward ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, sessions: Sequence[str], tokens: Sequence[Sequence[int]], taps: Sequence[int] = (),
                last_only: bool = False, final_hidden: bool = False) -> ForwardOutput:
        """Append tokens[r] to session r and return logits (and taps) for the appended positions.

        Sessions are processed in slot order internally; outputs come back in the caller's order.
        """
        counts = [len(t) for t in tokens]
        if min(counts) == 0:
            raise ValueError("every session in a forward needs at least one token")
        for s, n in zip(sessions, counts, strict=True):
            if self.cache.length(s) + n > self.max_context:
                raise ContextLengthError("prompt", f"session {s!r} would reach {self.cache.length(s) + n} tokens, "
                                         f"beyond the context window of {self.max_context}")
        slots = [self.cache.slot(s) for s in sessions]
        order = sorted(range(len(sessions)), key=slots.__getitem__)
        width = max(counts)
        ids = torch.zeros(len(sessions), width, dtype=torch.long)
        for row, i in enumerate(order):
            ids[row, : counts[i]] = torch.as_tensor(tokens[i], dtype=torch.long)
        positions = self.cache.begin([slots[i] for i in order], width)
        with self._only_real_rows([counts[i] for i in order], width):
            try:
                hidden, tapped = self._run(ids.to(self.device), positions.to(self.device), taps)
            finally:
                for i in order:
                    self.cache.lengths[slots[i]] -= width - counts[i]
        unsort = torch.empty(len(order), dtype=torch.long)
        unsort[torch.tensor(order)] = torch.arange(len(order))
        hidden = hidden[unsort]
        tapped = tapped[unsort] if tapped is not None else None
        if last_only:
            last = torch.tensor(counts) - 1
            logits = self.logits(hidden[torch.arange(len(counts)), last])
        else:
            with self._only_real_rows(counts, width):
                logits = self.logits(hidden)
        return ForwardOutput(logits=logits, taps=tapped, final_hidden=hidden if final_hidden else None)

    def _only_real_rows(self, counts: list[int], width: int):
        """Linears skip the padding of a ragged batch (zeros there); a no-op when nothing is padded."""
        if sum(counts) == width * len(counts):
            return contextlib.nullcontext()
        real = torch.arange(width)[None, :] < torch.tensor(counts)[:, None]
        return real_rows(len(counts) * width, real.flatten().nonzero().squeeze(1).to(self.device))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The frozen LM head (with Gemma's final soft-capping) in float32."""
        logits = self.lm_head(hidden).float()
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _run(self, ids, positions, taps):
        kv = torch.arange(int(positions.max()) + 1, device=ids.device)
        causal = kv[None, None, :] <= positions[:, :, None]
        masks = causal[:, None]
        if "sliding_attention" in self.layer_types:
            # models with mixed attention take one mask per layer type
            window = kv[None, None, :] > positions[:, :, None] - self.sliding_window
            masks = {"full_attention": masks, "sliding_attention": (causal & window)[:, None]}
        self._hook(taps)
        self._captured.clear()
        try:
            out = self.decoder(input_ids=ids, attention_mask=masks, position_ids=positions,
                               cache=self.cache, use_cache=True)
            tapped = torch.cat([self._captured[layer] for layer in taps], dim=-1) if taps else None
        finally:
            self._captured.clear()
        return out.last_hidden_state, tapped

    def _hook(self, taps: Sequence[int]) -> None:
        for layer in taps:
            if layer in self._hooked:
                continue
            module = self.decoder.embed_tokens if layer == -1 else self.decoder.layers[layer]
            module.register_forward_hook(self._capture_hook(layer))
            self._hooked.add(layer)

    def _capture_hook(self, layer: int):
        def hook(_module, _inputs, output):
            self._captured[layer] = output[0] if isinstance(output, tuple) else output
        return hook
