"""DSpark's sequential heads (vanilla / gated / rnn Markov corrections) and its confidence head.

The backbone drafts all γ slots in one pass; a sequential head then corrects slot j's logits with the
token of slot j-1 (the anchor for slot 0): ground truth in training, the sampled draft at inference.
Both paths go through the same `step`, so teacher-forced training logits and left-to-right sampling
logits are the same function (algorithms.md section 3).
"""

from __future__ import annotations

import torch
from torch import nn

from specserve.drafters.draft_config import DraftConfig


class SequentialHead(nn.Module):
    """Vanilla Markov head: logits_j = U_j + W2 · W1[x_prev], a rank-r first-order transition matrix."""

    def __init__(self, cfg: DraftConfig):
        super().__init__()
        self.rank = cfg.markov_rank
        self.markov_w1 = nn.Embedding(cfg.vocab_size, cfg.markov_rank)
        self.markov_w2 = nn.Linear(cfg.markov_rank, cfg.vocab_size, bias=False)

    def prev_embedding(self, prev_ids: torch.Tensor) -> torch.Tensor:
        return self.markov_w1(prev_ids)

    def sampling_layout(self) -> None:
        """Store an fp32 CPU W2 column-major (its [rank, V] transpose contiguous) for sampling.

        Sampling multiplies W2 by one feature row per slot, a memory-bound product that MKL runs ~1.3x
        (rank 256: 2x) faster from rows of V; bf16 (oneDNN) runs slower that way, so it keeps its layout.
        The parameter keeps its shape, name and values; products may differ in the last bit.
        """
        weight = self.markov_w2.weight
        if weight.device.type == "cpu" and weight.dtype == torch.float32:
            weight.data = weight.data.t().contiguous().t()

    def initial_state(self, like: torch.Tensor) -> torch.Tensor | None:
        """Recurrent state before slot 0 (only the rnn head has one)."""
        return None

    def step(self, base_logits: torch.Tensor, hidden: torch.Tensor, prev_ids: torch.Tensor,
             state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One slot: base logits [..., V], backbone output [..., H], previous token ids [...] -> logits, state."""
        return base_logits + self.markov_w2(self.prev_embedding(prev_ids)), state

    def block(self, base_logits: torch.Tensor, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced correction of whole blocks: [..., γ, V], [..., γ, H], [..., γ] -> [..., γ, V]."""
        state = self.initial_state(hidden[..., 0, :])
        out = []
        for j in range(base_logits.shape[-2]):
            logits, state = self.step(base_logits[..., j, :], hidden[..., j, :], prev_ids[..., j], state)
            out.append(logits)
        return torch.stack(out, dim=-2)


class GatedHead(SequentialHead):
    """g = σ(gate_proj([h_j; e])), logits_j = U_j + W2 · (g ⊙ e) with e = W1[x_prev]."""

    def __init__(self, cfg: DraftConfig):
        super().__init__(cfg)
        self.gate_proj = nn.Linear(cfg.hidden_size + cfg.markov_rank, cfg.markov_rank)

    def step(self, base_logits, hidden, prev_ids, state):
        e = self.prev_embedding(prev_ids)
        gate = torch.sigmoid(self.gate_proj(torch.cat([hidden, e], dim=-1)))
        return base_logits + self.markov_w2(gate * e), state


class RNNHead(SequentialHead):
    """A gated recurrent state over the block: z = [s; e; h] -> gate, candidate, output (in that order)."""

    def __init__(self, cfg: DraftConfig):
        super().__init__(cfg)
        self.joint_proj = nn.Linear(2 * cfg.markov_rank + cfg.hidden_size, 3 * cfg.markov_rank)

    def initial_state(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(*like.shape[:-1], self.rank)

    def step(self, base_logits, hidden, prev_ids, state):
        e = self.prev_embedding(prev_ids)
        gate, cand, out = self.joint_proj(torch.cat([state, e, hidden], dim=-1)).chunk(3, dim=-1)
        gate = torch.sigmoid(gate)
        state = gate * state + (1.0 - gate) * torch.tanh(cand)
        return base_logits + self.markov_w2(torch.tanh(out)), state


def build_sequential_head(cfg: DraftConfig) -> SequentialHead | None:
    """The configured head, or None for DFlash and other rank-0 drafts."""
    if cfg.markov_rank <= 0:
        return None
    return {"vanilla": SequentialHead, "gated": GatedHead, "rnn": RNNHead}[cfg.markov_head_type](cfg)


class ConfidenceHead(nn.Module):
    """z_j = proj([h_j] or [h_j; W1[x_prev]]): logit of P(slot j accepted | all earlier slots accepted)."""

    def __init__(self, cfg: DraftConfig):
        super().__init__()
        width = cfg.hidden_size + (cfg.markov_rank if cfg.confidence_with_markov else 0)
        self.proj = nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor, prev_embedding: torch.Tensor | None) -> torch.Tensor:
        features = hidden if prev_embedding is None else torch.cat([hidden, prev_embedding], dim=-1)
        return self.proj(features).squeeze(-1).float()
