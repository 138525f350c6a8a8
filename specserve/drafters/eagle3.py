"""Eagle3: a one-layer autoregressive drafter fed with target features (algorithms.md §4).

Slot t pairs a hidden state with the *next* token: `(g_t, x_{t+1})` at RoPE position t, and its output
predicts `x_{t+2}`. For committed positions `g_t = fc(taps_t)`; while drafting, the layer's own output
(width H, not projected again) is fed back with the token just sampled. The layer attends causally
over its own K/V cache. At inference the cache holds one slot per committed position except the
newest token's; drafting appends speculative slots that the next round truncates and re-extends with
the target features of what was actually committed.

`ttt_forward` is DeepSpec's training-time test: `ttt_length` steps over the whole sequence where step
k sees step-0 keys causally plus, in every later step, only the key at its own position.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from specserve.drafters.draft_config import DraftConfig
from specserve.drafters.draft_kv_cache import DraftKVCache, stage_batch
from specserve.drafters.layers import DecoderLayerBase, Rotary, rms_norm, softcap, token_embedding

# (keys, values of the slots being processed) -> all keys, values and the mask [B, 1, Q, K] to attend with
KVJoin = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class Eagle3Layer(DecoderLayerBase):
    """The Eagle3 layer: attention over [input_layernorm(embed(x)); hidden_norm(g)], residual on g."""

    def __init__(self, cfg: DraftConfig, layer_idx: int):
        super().__init__(cfg, layer_idx, 2 * cfg.hidden_size)
        self.input_layernorm = rms_norm(cfg, cfg.hidden_size)
        self.hidden_norm = rms_norm(cfg, cfg.hidden_size)

    def forward(self, embeds: torch.Tensor, g: torch.Tensor, rope, join: KVJoin) -> torch.Tensor:
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(g)], dim=-1)
        q = self.self_attn.queries(x, *rope)
        k, v = self.self_attn.keys_values(x, *rope)
        keys, values, mask = join(k, v)
        return self.finish(g, self.self_attn.output(q, keys, values, mask))


class Eagle3Model(nn.Module):
    """Eagle3 draft model; parameter names match DeepSpec's `model.safetensors` keys."""

    def __init__(self, cfg: DraftConfig):
        super().__init__()
        if cfg.kind != "eagle3":
            raise ValueError(f"Eagle3Model needs an eagle3 config, got kind {cfg.kind!r}")
        if cfg.num_layers != 1:
            # DeepSpec's evaluator requires one layer; a second layer's cached K/V would depend on
            # how committed slots were batched when the cache is re-extended
            raise ValueError(f"Eagle3 drafts have exactly 1 decoder layer, config has {cfg.num_layers}")
        self.cfg = cfg
        self.embed_tokens = token_embedding(cfg)
        self.fc = nn.Linear(cfg.num_taps * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(cfg, 0)])
        self.norm = rms_norm(cfg, cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Target taps (width m·H) go through fc; the draft's own outputs (width H) pass unchanged."""
        hidden = hidden.to(self.fc.weight.dtype)
        return self.fc(hidden) if hidden.shape[-1] == self.fc.in_features else hidden

    def logits(self, g: torch.Tensor) -> torch.Tensor:
        return softcap(self.cfg, self.lm_head(self.norm(g)))

    def target_logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """The target's logits from its final-norm hidden state, through the shared frozen head."""
        return softcap(self.cfg, self.lm_head(final_hidden.to(self.lm_head.weight.dtype)))

    def _layer(self, tokens: torch.Tensor, g: torch.Tensor, positions: torch.Tensor, join: KVJoin) -> torch.Tensor:
        embeds = self.embed_tokens(tokens)
        return self.layers[0](embeds, g, self.rotary(positions, embeds), join)

    def ttt_forward(self, taps: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    ttt_length: int | None = None) -> list[torch.Tensor]:
        """Draft logits [B, L, V] of every training-time-test step (teacher-forced tokens).

        Step k feeds tokens shifted left by k + 1 at RoPE positions t + k; its hidden input is step k-1's
        output. Query t of step k sees step-0 keys ≤ t and the key at t of steps 1..k; queries at or past
        (valid length - k) see nothing and output zeros, as DeepSpec's flex-attention mask does.
        """
        bsz, seq_len = input_ids.shape
        steps = self.cfg.ttt_length if ttt_length is None else ttt_length
        device = input_ids.device
        lengths = torch.full((bsz,), seq_len, device=device) if attention_mask is None else attention_mask.sum(-1)
        pos = torch.arange(seq_len, device=device)
        g = self.project(taps)
        tokens = _shift_left(input_ids)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        out = []
        for k in range(steps):
            valid = pos[None, :] < (lengths - k).clamp_min(0)[:, None]  # [B, L] queries / step-0 keys
            causal = (pos[None, :] <= pos[:, None])[None] & valid[:, None, :] & valid[:, :, None]
            diagonal = torch.eye(seq_len, dtype=torch.bool, device=device)[None] & valid[:, :, None]
            mask = torch.cat([causal, *[diagonal] * k], dim=-1)[:, None]

            def join(key, value, mask=mask):
                keys.append(key)
                values.append(value)
                return torch.cat(keys, dim=2), torch.cat(values, dim=2), mask

            g = self._layer(tokens, g, (pos + k).expand(bsz, -1), join)
            out.append(self.logits(g))
            tokens = _shift_left(tokens)
        return out

    @torch.no_grad()
    def extend(self, caches: list[DraftKVCache], hiddens: list[torch.Tensor], tokens: list[list[int]]) -> torch.Tensor:
        """Append slots to each session's cache: hiddens[i] [n_i, m·H or H] paired with tokens[i] (n_i ids).

        Returns the output of every session's newest slot [B, H]: the hidden that predicts its next token.
        """
        n_new = [len(t) for t in tokens]
        if any(n == 0 for n in n_new):
            raise ValueError("extend needs at least one new slot per session")
        g = self._pad([self.project(h) for h in hiddens])
        ids = self._pad([torch.as_tensor(t, dtype=torch.long) for t in tokens])
        return self._run(caches, g, ids, n_new)

    @torch.no_grad()
    def step(self, caches: list[DraftKVCache], g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Append one (drafting) slot per session: hidden g [B, H] with token ids [B] -> new hidden [B, H]."""
        return self._run(caches, g[:, None], tokens.reshape(-1, 1).to(g.device), [1] * len(caches))

    def _run(self, caches: list[DraftKVCache], g: torch.Tensor, tokens: torch.Tensor, n_new: list[int]) -> torch.Tensor:
        device = g.device
        starts = torch.tensor([c.length for c in caches], device=device)
        positions = starts[:, None] + torch.arange(tokens.shape[1], device=device)
        ends = starts + torch.tensor(n_new, device=device)

        def join(k, v):
            keys, values, _ = stage_batch(caches, 0, [k[i, :, :n] for i, n in enumerate(n_new)],
                                          [v[i, :, :n] for i, n in enumerate(n_new)])
            # causal over cache + new slots; keys past a session's own end are batch padding
            kv_pos = torch.arange(keys.shape[2], device=device)[None, None, :]
            mask = (kv_pos <= positions[:, :, None]) & (kv_pos < ends[:, None, None])
            return keys, values, mask[:, None]

        out = self._layer(tokens.long(), g, positions, join)
        for cache, n in zip(caches, n_new, strict=True):
            cache.commit(n)
        return out[torch.arange(len(caches), device=device), torch.tensor(n_new, device=device) - 1]

    def _pad(self, rows: list[torch.Tensor]) -> torch.Tensor:
        width = max(r.shape[0] for r in rows)
        out = rows[0].new_zeros(len(rows), width, *rows[0].shape[1:]).to(self.fc.weight.device)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r.to(out.device)
        return out


def _shift_left(ids: torch.Tensor) -> torch.Tensor:
    """Position t gets the token of t + 1; the last position gets 0 (DeepSpec's zero padding)."""
    return torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)
