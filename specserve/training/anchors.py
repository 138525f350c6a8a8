"""DSpark/DFlash anchor sampling and the per-slot supervision mask (algorithms.md section 5).

An anchor `a` is a position with `loss_mask[a] = loss_mask[a+1] = 1`; each sequence draws `N` distinct
candidates uniformly without replacement and sorts them, and the blocks it could not fill are dummies
(`keep` False). Each row draws from its own generator, keyed by (seed, epoch, source row), so a row's
anchors do not depend on which rows share its batch, on the rank that holds it, or on a resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def row_generator(seed: int, epoch: int, row_index: int) -> torch.Generator:
    """A CPU generator for one row's anchors in one epoch, seeded by a hash of (seed, epoch, row)."""
    digest = hashlib.blake2b(f"anchors:{seed}:{epoch}:{row_index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "big") >> 1)


def anchor_candidates(loss_mask: torch.Tensor) -> torch.Tensor:
    """[B, L-1] bool: positions whose token and next token are both in the loss mask."""
    valid = loss_mask > 0
    return valid[:, :-1] & valid[:, 1:]


def sample_anchors(loss_mask: torch.Tensor, num_anchors: int,
                   generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors [B, N] (sorted; 0 for dummy blocks) and keep [B, N] (False for dummies), one generator per row."""
    if len(generators) != loss_mask.shape[0]:
        raise ValueError(f"need one generator per row: {len(generators)} for {loss_mask.shape[0]} rows")
    candidates = anchor_candidates(loss_mask).cpu()
    anchors = torch.zeros(loss_mask.shape[0], num_anchors, dtype=torch.long)
    keep = torch.zeros(loss_mask.shape[0], num_anchors, dtype=torch.bool)
    for row, gen in enumerate(generators):
        positions = candidates[row].nonzero().flatten()
        k = min(num_anchors, len(positions))
        chosen = positions[torch.randperm(len(positions), generator=gen)[:k]].sort().values
        anchors[row, :k], keep[row, :k] = chosen, True
    return anchors.to(loss_mask.device), keep.to(loss_mask.device)


def supervision_mask(anchors: torch.Tensor, keep: torch.Tensor, loss_mask: torch.Tensor, block_size: int
                     ) -> torch.Tensor:
    """[B, N, γ] bool: slot j of the block at `a` is supervised iff it and every earlier slot predict a token
    (position a + i + 1, i <= j) inside the sequence and in the loss mask (the contiguous-prefix rule)."""
    seq_len = loss_mask.shape[1]
    labels = anchors[..., None] + torch.arange(block_size, device=anchors.device) + 1
    inside = labels < seq_len
    masked = loss_mask.gather(1, labels.clamp(max=seq_len - 1).flatten(1)).view_as(labels) > 0
    ok = inside & masked & keep[..., None].bool()
    return ok.int().cumprod(-1).bool()
