"""DSpark and DFlash: parallel block drafters with KV injection of target features (algorithms.md §3).

One backbone pass drafts a whole block `[anchor, MASK × (γ-1)]` (at inference, optionally only its first
slots: `draft_block(block_lens=...)`). Every draft layer projects the
context `C = RMSNorm(fc(taps))` with its own k/v projections and puts those keys first; block queries
see every context position before their anchor and all slots of their own block. DFlash stops there
(slot j's logits are `lm_head(h_j)`); DSpark adds a sequential head that corrects slot j with the token
of slot j-1 and a confidence head that predicts whether slot j survives verification.

Two entry points share the backbone: `train_forward` (teacher-forced blocks at given anchors, for the
loss) and `draft_block` (one inference round for a batch of sessions, each with its own
`DraftKVCache` of context K/V that grows with the committed taps and never keeps block K/V).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from specserve.drafters.draft_config import DraftConfig
from specserve.drafters.draft_kv_cache import DraftKVCache, stage_batch
from specserve.drafters.layers import DecoderLayerBase, Rotary, rms_norm, softcap, token_embedding
from specserve.drafters.sequential_heads import ConfidenceHead, build_sequential_head

# (logits [B, V], slot j) -> (sampled ids [B], the distribution they were sampled from [B, V]; None
# when every row is greedy and the caller takes q as one-hot)
Sampler = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None]]
# (layer, context k/v, block k/v) -> keys, values and mask [B, 1, Q or 1, K] the block queries attend with
KVJoin = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def greedy_sampler(logits: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax (first index on ties) with its one-hot distribution."""
    ids = logits.argmax(-1)
    return ids, torch.nn.functional.one_hot(ids, logits.shape[-1]).float()


@dataclass
class DSparkTrainOutput:
    """Teacher-forced outputs at N anchors per sample (shapes [B, N, γ, ...])."""

    draft_logits: torch.Tensor  # [B, N, γ, V] after the sequential head (and soft-capping)
    confidence_logits: torch.Tensor | None  # [B, N, γ] (pre-sigmoid), None without a confidence head
    target_ids: torch.Tensor  # [B, N, γ] token each slot predicts (clamped to the sequence, 0 for dummy blocks)
    hidden: torch.Tensor  # [B, N, γ, H] backbone output after the final norm


@dataclass
class BlockInput:
    """One session's share of a `draft_block` call."""

    cache: DraftKVCache  # context K/V of positions 0..cache.length-1; grows by len(new_taps)
    new_taps: torch.Tensor  # [n, m*H] taps of positions cache.length .. cache.length + n - 1
    anchor: int  # newest committed token, at position cache.length + n


@dataclass
class BlockOutput:
    """Drafts of one round for a batch of sessions (shapes [B, k, ...], k = tokens sampled)."""

    ids: torch.Tensor  # [B, k]
    q: torch.Tensor | None  # [B, k, V] distribution each id was sampled from; None: all greedy (one-hot)
    confidence_logits: torch.Tensor | None  # [B, k]
    hidden: torch.Tensor  # [B, max(block_lens), H] backbone output of every slot (γ slots by default)

    @property
    def confidence(self) -> torch.Tensor | None:
        """c_j = σ(z_j), the probability slot j is accepted given all earlier slots were."""
        return None if self.confidence_logits is None else torch.sigmoid(self.confidence_logits)


class DSparkLayer(DecoderLayerBase):
    """A draft decoder layer with KV injection: block queries, keys/values = [context; block]."""

    def __init__(self, cfg: DraftConfig, layer_idx: int):
        super().__init__(cfg, layer_idx, cfg.hidden_size)
        self.layer_idx = layer_idx
        self.input_layernorm = rms_norm(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope_block, rope_context, join: KVJoin) -> torch.Tensor:
        h = self.input_layernorm(x)
        q = self.self_attn.queries(h, *rope_block)
        # the context is projected by the same k/v projections but is not normed by input_layernorm
        k_ctx, v_ctx = self.self_attn.keys_values(context, *rope_context)
        k_blk, v_blk = self.self_attn.keys_values(h, *rope_block)
        k, v, mask = join(self.layer_idx, k_ctx, v_ctx, k_blk, v_blk)
        return self.finish(x, self.self_attn.output(q, k, v, mask))


class DSparkModel(nn.Module):
    """DSpark/DFlash draft model; parameter names match DeepSpec's `model.safetensors` keys."""

    def __init__(self, cfg: DraftConfig):
        super().__init__()
        if cfg.kind not in ("dspark", "dflash"):
            raise ValueError(f"DSparkModel needs a dspark/dflash config, got kind {cfg.kind!r}")
        self.cfg = cfg
        self.embed_tokens = token_embedding(cfg)
        self.fc = nn.Linear(cfg.num_taps * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.hidden_norm = rms_norm(cfg, cfg.hidden_size)
        self.layers = nn.ModuleList(DSparkLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = rms_norm(cfg, cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg)
        self.markov_head = build_sequential_head(cfg)
        self.confidence_head = ConfidenceHead(cfg) if cfg.confidence_head else None

    def backbone(self, block_ids: torch.Tensor, taps: torch.Tensor, block_pos: torch.Tensor,
                 context_pos: torch.Tensor, join: KVJoin) -> torch.Tensor:
        """Block token ids [B, Q], taps [B, Lc, m*H] and their positions -> normed hidden [B, Q, H]."""
        x = self.embed_tokens(block_ids)
        context = self.hidden_norm(self.fc(taps.to(x.dtype)))
        rope_block, rope_context = self.rotary(block_pos, x), self.rotary(context_pos, x)
        for layer in self.layers:
            x = layer(x, context, rope_block, rope_context, join)
        return self.norm(x)

    def base_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(self.cfg, self.lm_head(hidden))

    def confidence_logits(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor | None:
        if self.confidence_head is None:
            return None
        prev = self.markov_head.prev_embedding(prev_ids).to(hidden.dtype) if self.cfg.confidence_with_markov else None
        return self.confidence_head(hidden, prev)

    def train_forward(self, taps: torch.Tensor, input_ids: torch.Tensor, anchors: torch.Tensor,
                      keep: torch.Tensor | None = None) -> DSparkTrainOutput:
        """Teacher-forced blocks: taps [B, L, m*H], input_ids [B, L], anchors [B, N] (sorted), keep [B, N].

        Blocks with keep False are dummies (no anchor was available): their queries see nothing.
        """
        cfg, gamma = self.cfg, self.cfg.block_size
        bsz, seq_len = input_ids.shape
        n_blocks = anchors.shape[1]
        keep = torch.ones_like(anchors, dtype=torch.bool) if keep is None else keep.bool()
        device = input_ids.device
        anchor_ids = input_ids.gather(1, anchors)
        block_ids = torch.full((bsz, n_blocks, gamma), cfg.mask_token_id, dtype=torch.long, device=device)
        block_ids[:, :, 0] = torch.where(keep, anchor_ids, cfg.mask_token_id)
        offsets = torch.arange(gamma, device=device)
        block_pos = (anchors[..., None] + offsets).reshape(bsz, -1)
        context_pos = torch.arange(seq_len, device=device).expand(bsz, -1)
        mask = _training_mask(anchors, keep, seq_len, gamma)

        def join(layer, k_ctx, v_ctx, k_blk, v_blk):
            return torch.cat([k_ctx, k_blk], dim=2), torch.cat([v_ctx, v_blk], dim=2), mask

        hidden = self.backbone(block_ids.reshape(bsz, -1), taps, block_pos, context_pos, join)
        hidden = hidden.reshape(bsz, n_blocks, gamma, -1)
        # labels: input_ids[a + j + 1], clamped into the sequence (DeepSpec feeds the clamped ids to the
        # sequential head too, so the out-of-sequence slots must be reproduced, not masked, here)
        label_idx = (anchors[..., None] + offsets + 1).clamp(max=seq_len - 1)
        label_idx = torch.where(keep[..., None], label_idx, 0)
        target_ids = input_ids.gather(1, label_idx.reshape(bsz, -1)).reshape(bsz, n_blocks, gamma)
        prev_ids = torch.cat([anchor_ids[..., None], target_ids[..., :-1]], dim=-1)
        logits = self.base_logits(hidden)
        if self.markov_head is not None:
            logits = self.markov_head.block(logits, hidden, prev_ids)
        return DSparkTrainOutput(draft_logits=logits, confidence_logits=self.confidence_logits(hidden, prev_ids),
                                 target_ids=target_ids, hidden=hidden)

    @torch.no_grad()
    def draft_block(self, inputs: list[BlockInput], num_tokens: int | None = None,
                    sampler: Sampler = greedy_sampler, block_lens: Sequence[int] | None = None) -> BlockOutput:
        """One drafting round for a batch of sessions.

        Each session's new taps are appended to its context cache in the same forward that drafts its
        block; the block K/V are staged but never committed. Slots are then sampled left to right
        through the sequential head (each sampled id feeds the next slot), `num_tokens` of them (by
        default all slots of the longest block).

        `block_lens[i]` is how many block slots session i's backbone pass has: γ by default, as in training
        and in DeepSpec's rollout. A shorter block (the slots a round drafts) costs less; its drafts differ
        slightly, since its slots attend to fewer mask slots after them, and q stays exactly what each id was
        sampled from (lossless). The batch runs max(block_lens) slots, each session's queries seeing only its
        own first block_lens[i] keys, so a session drafts the same whatever its batch mates; read its first
        block_lens[i] drafts only (the slots past them are drafted too, from a block they do not belong to).
        """
        cfg = self.cfg
        lens = [cfg.block_size] * len(inputs) if block_lens is None else list(block_lens)
        k = max(lens, default=cfg.block_size) if num_tokens is None else num_tokens
        if not 0 <= k <= cfg.block_size:
            raise ValueError(f"num_tokens must be in [0, {cfg.block_size}], got {k}")
        if len(lens) != len(inputs) or not all(1 <= n <= cfg.block_size for n in lens) or k > max(lens, default=k):
            raise ValueError(f"block_lens must give each of the {len(inputs)} sessions 1 to {cfg.block_size} slots, "
                             f"at least num_tokens={k} for one, got {block_lens}")
        gamma = max(lens, default=cfg.block_size)
        device = self.fc.weight.device
        caches = [item.cache for item in inputs]
        n_new = [int(item.new_taps.shape[0]) for item in inputs]
        width = max(n_new)
        taps = self.fc.weight.new_zeros(len(inputs), width, self.fc.in_features)
        for i, item in enumerate(inputs):
            taps[i, : n_new[i]] = item.new_taps.to(device, taps.dtype)
        starts = torch.tensor([c.length for c in caches], device=device)
        context_pos = starts[:, None] + torch.arange(width, device=device)
        anchor_pos = starts + torch.tensor(n_new, device=device)
        block_pos = anchor_pos[:, None] + torch.arange(gamma, device=device)
        block_ids = torch.full((len(inputs), gamma), cfg.mask_token_id, dtype=torch.long, device=device)
        anchors = torch.tensor([item.anchor for item in inputs], dtype=torch.long, device=device)
        block_ids[:, 0] = anchors

        def join(layer, k_ctx, v_ctx, k_blk, v_blk):
            rows = list(enumerate(zip(n_new, lens, strict=True)))  # (context taps, block slots) per session
            ks = [torch.cat([k_ctx[i, :, :n], k_blk[i, :, :m]], dim=1) for i, (n, m) in rows]
            vs = [torch.cat([v_ctx[i, :, :n], v_blk[i, :, :m]], dim=1) for i, (n, m) in rows]
            keys, values, valid = stage_batch(caches, layer, ks, vs)
            return keys, values, None if valid is None else valid[:, None, None, :]

        hidden = self.backbone(block_ids, taps, block_pos, context_pos, join)
        for cache, n in zip(caches, n_new, strict=True):
            cache.commit(n)
        return self._sample_block(hidden, anchors, k, sampler)

    def _sample_block(self, hidden: torch.Tensor, anchors: torch.Tensor, k: int, sampler: Sampler) -> BlockOutput:
        """Left-to-right sampling through the sequential head; q_j is exactly what slot j was drawn from.

        Only the sequential head sits in the loop: the base logits of the k sampled slots come from one
        lm_head pass before it, and the confidence head (which reads the token before each slot) runs
        once on the whole block after it.
        """
        base = self.base_logits(hidden[:, :k])
        head = self.markov_head
        state = None if head is None else head.initial_state(hidden[:, 0])
        prev, ids, probs = anchors, [], []
        for j in range(k):
            logits = base[:, j]
            if head is not None:
                logits, state = head.step(logits, hidden[:, j], prev, state)
            prev, q = sampler(logits, j)
            ids.append(prev)
            probs.append(q)
        drafts = torch.stack(ids, 1) if ids else anchors.new_zeros(hidden.shape[0], 0)
        if not probs:
            q = hidden.new_zeros(hidden.shape[0], 0, self.cfg.vocab_size)
        else:
            q = None if probs[0] is None else torch.stack(probs, 1)
        prev_ids = torch.cat([anchors[:, None], drafts], 1)[:, :k]
        return BlockOutput(ids=drafts, q=q, confidence_logits=self.confidence_logits(hidden[:, :k], prev_ids),
                           hidden=hidden)


def _training_mask(anchors: torch.Tensor, keep: torch.Tensor, seq_len: int, gamma: int) -> torch.Tensor:
    """[B, 1, N·γ, L + N·γ]: context keys strictly before the block's anchor, plus the block's own slots."""
    bsz, n_blocks = anchors.shape
    device = anchors.device
    q_block = torch.arange(n_blocks * gamma, device=device) // gamma
    anchor_q = anchors[:, q_block]  # [B, Q]
    sees_context = torch.arange(seq_len, device=device)[None, None, :] < anchor_q[..., None]
    sees_block = (q_block[:, None] == q_block[None, :]).expand(bsz, -1, -1)
    mask = torch.cat([sees_context, sees_block], dim=-1) & keep[:, q_block, None]
    return mask[:, None]
