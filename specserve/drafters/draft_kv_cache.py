"""Per-session K/V cache of a draft model, indexed by position: growable, truncatable, batchable.

Every layer owns one buffer `[kv_heads, capacity, head_dim]`. `stage` writes new keys/values right
after the committed ones and returns views that include them, without committing: a DSpark round
stages context *and* block K/V, attends, then commits only the context part, so block K/V are simply
overwritten next round. Rollback (`truncate`) is moving the length back, as in gpt-fast's
position-indexed cache. `stage_batch` pads several sessions' views into one batch with a key mask.
"""

from __future__ import annotations

import torch


class DraftKVCache:
    """Keys/values of one session for every draft layer; `length` positions are committed."""

    def __init__(self, num_layers: int):
        self.length = 0
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a draft cache of length {self.length} to {length}")
        self.length = length

    def commit(self, n: int) -> None:
        """Keep the first `n` positions staged by the last `stage` calls."""
        self.length += n

    def stage(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [kv_heads, T, d] at positions length..length+T-1; return views of positions 0..length+T-1."""
        end = self.length + k.shape[1]
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_k.shape[1] < end:
            capacity = max(64, end, 2 * (0 if buf_k is None else buf_k.shape[1]))
            new_k = k.new_empty(k.shape[0], capacity, k.shape[2])
            new_v = v.new_empty(v.shape[0], capacity, v.shape[2])
            if buf_k is not None:
                new_k[:, : self.length] = buf_k[:, : self.length]
                new_v[:, : self.length] = buf_v[:, : self.length]
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, self.length : end] = k
        buf_v[:, self.length : end] = v
        return buf_k[:, :end], buf_v[:, :end]


def stage_batch(caches: list[DraftKVCache], layer: int, keys: list[torch.Tensor],
                values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage keys[i]/values[i] ([kv_heads, T_i, d]) into caches[i] and batch every session's views.

    Returns keys/values [B, kv_heads, K, d], right-padded to the longest session, and a key mask
    [B, K] (None for a single session, where nothing is padded).
    """
    views = [cache.stage(layer, k, v) for cache, k, v in zip(caches, keys, values, strict=True)]
    if len(views) == 1:
        return views[0][0][None], views[0][1][None], None
    lengths = [k.shape[1] for k, _ in views]
    width = max(lengths)
    k0 = views[0][0]
    out_k = k0.new_zeros(len(views), k0.shape[0], width, k0.shape[2])
    out_v = torch.zeros_like(out_k)
    for i, (k, v) in enumerate(views):
        out_k[i, :, : lengths[i]] = k
        out_v[i, :, : lengths[i]] = v
    valid = torch.arange(width, device=k0.device)[None, :] < torch.tensor(lengths, device=k0.device)[:, None]
    return out_k, out_v, valid
