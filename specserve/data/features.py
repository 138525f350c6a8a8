"""Target features for training, and the batch structure both feature sources (cache, online) yield.

`target_features` is the one function that runs the frozen target over a training sequence: the cache
writer and the online source both call it, one sequence per forward, so that for the same sequence
they see the same kernels with the same shapes and get bitwise-identical features (a padded batch
changes GEMM and attention shapes, and with them the last bits).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from specserve.errors import InvalidRequestError

DEFAULT_NUM_TAPS = 5


def default_tap_layers(num_layers: int, num_taps: int = DEFAULT_NUM_TAPS) -> tuple[int, ...]:
    """Taps spread evenly over layers [1, n-3], which reproduces every shipped tap set.

    (Qwen3-4B/8B, 36 layers: 1, 9, 17, 25, 33; Qwen3-14B, 40 layers: 1, 10, 19, 28, 37.)
    """
    start, end = 1, num_layers - 3
    if end - start + 1 < num_taps:  # a small (test or demo) target: spread over every tappable layer
        start, end = 0, num_layers - 2
    if end - start + 1 <= num_taps:
        return tuple(range(start, end + 1))
    if num_taps == 1:
        return (start,)
    return tuple(round(start + i * (end - start) / (num_taps - 1)) for i in range(num_taps))


def check_tap_layers(layer_ids: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Validate a tap set: strictly increasing, within [-1, n-2] (never the last layer). Returns it as a tuple."""
    ids = tuple(int(i) for i in layer_ids)
    if not ids:
        raise InvalidRequestError("target_layer_ids", "must name at least one layer")
    if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
        raise InvalidRequestError("target_layer_ids", f"must be strictly increasing, got {list(ids)}")
    if ids[0] < -1 or ids[-1] > num_layers - 2:
        raise InvalidRequestError("target_layer_ids", f"must lie in [-1, {num_layers - 2}] for a {num_layers}-layer "
                                  f"target (the last layer's output is never tapped), got {list(ids)}")
    return ids


def target_features(target, input_ids: Sequence[int], layer_ids: Sequence[int], final: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `target` (a CausalLM) over one sequence: taps [T, m*H] and the final-norm hidden [T, H] (or None).

    The tensors have the target's dtype and device and are ordinary (not inference-mode) tensors, so a
    training step may use them in autograd.
    """
    session = f"features-{uuid.uuid4().hex}"
    target.open(session)
    try:
        out = target.forward([session], [list(map(int, input_ids))], taps=tuple(layer_ids), last_only=True,
                             final_hidden=final)
    finally:
        target.close(session)
    taps = out.taps[0].clone()
    return taps, out.final_hidden[0].clone() if final else None


@dataclass
class FeatureRow:
    """One training sequence with its target features (float32; CPU from the cache, the target's device online)."""

    index: int  # the source row
    input_ids: torch.Tensor  # [L] int64
    loss_mask: torch.Tensor  # [L] int64 (0/1)
    taps: torch.Tensor  # [L, m*H] float32
    final_hidden: torch.Tensor | None  # [L, H] float32, None when not stored / not asked for


@dataclass
class FeatureBatch:
    """Right-padded rows: what the loss receives. Padding has loss_mask 0, id 0 and zero features."""

    indices: torch.Tensor  # [B] int64, source rows
    input_ids: torch.Tensor  # [B, L] int64
    loss_mask: torch.Tensor  # [B, L] int64
    lengths: torch.Tensor  # [B] int64, real tokens per row
    taps: torch.Tensor  # [B, L, m*H] float32
    final_hidden: torch.Tensor | None  # [B, L, H] float32


def collate(rows: Sequence[FeatureRow]) -> FeatureBatch:
    """Stack rows into a right-padded batch."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    device = rows[0].taps.device
    lengths = torch.tensor([len(r.input_ids) for r in rows], device=device)
    width, n = int(lengths.max()), len(rows)
    ids = torch.zeros(n, width, dtype=torch.long, device=device)
    mask = torch.zeros(n, width, dtype=torch.long, device=device)
    taps = torch.zeros(n, width, rows[0].taps.shape[-1], device=device)
    with_final = all(r.final_hidden is not None for r in rows)
    final = torch.zeros(n, width, rows[0].final_hidden.shape[-1], device=device) if with_final else None
    for i, r in enumerate(rows):
        length = len(r.input_ids)
        ids[i, :length], mask[i, :length], taps[i, :length] = r.input_ids, r.loss_mask, r.taps
        if final is not None:
            final[i, :length] = r.final_hidden
    return FeatureBatch(indices=torch.tensor([r.index for r in rows], device=device), input_ids=ids, loss_mask=mask,
                        lengths=lengths, taps=taps, final_hidden=final)


class FeatureSource(Protocol):
    """Where a training step gets its batches: the offline cache or the online target."""

    def __len__(self) -> int: ...

    def row(self, i: int) -> FeatureRow:
        """One row with its features."""
        ...

    def batch(self, indices: Sequence[int]) -> FeatureBatch:
        """Rows `indices`, right-padded into one batch."""
        ...


def epoch_order(num_rows: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
                ) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation keyed by (seed, epoch), cut into global batches of
    `batch_size * world_size` rows (the incomplete last one is dropped), each split by rank."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise InvalidRequestError("batch_size", f"batch_size {batch_size}, rank {rank}, world_size {world_size}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_rows, generator=gen).tolist()
    step = batch_size * world_size
    return [order[g + rank * batch_size: g + (rank + 1) * batch_size] for g in range(0, num_rows - step + 1, step)]


def iter_batches(source: FeatureSource, batch_size: int, seed: int = 0, epoch: int = 0, start: int = 0,
                 rank: int = 0, world_size: int = 1) -> Iterator[FeatureBatch]:
    """Training batches of one epoch from a cache or the online target, from batch `start` on (to resume)."""
    for indices in epoch_order(len(source), batch_size, seed, epoch, rank, world_size)[start:]:
        yield source.batch(indices)
