"""A slot-based KV cache: one slot per session, truncation is a length, batches are slot ranges.

Each layer keeps K and V buffers shaped [slots, kv_heads, capacity, head_dim], allocated lazily at the
first write (so per-layer head sizes and KV-shared layers of Gemma work) and grown by doubling.
Sessions are kept compact in slots 0..n-1: closing a session moves the last slot into the hole, so
the usual batch (every running session, ordered by slot) reads the buffers as a view, without a copy.

transformers' attention layers call `update(k, v, layer_idx)`; the model adapter announces the batch
(slots, start lengths) with `begin` before each forward. Rollback never touches the buffers: stale
positions beyond a session's length are hidden by the attention mask and overwritten later.
"""

from __future__ import annotations

import torch

from specserve.errors import SessionError


class SlotKVCache:
    """Per-session KV storage shared by every layer of one model."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.dtype = dtype
        self.device = torch.device(device)
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._slot_of: dict[str, int] = {}
        self._session_at: list[str] = []
        self.lengths: list[int] = []
        self._slot_capacity = 0
        self._len_capacity = 0
        # the batch of the forward in progress
        self._batch_slots: torch.Tensor | None = None
        self._batch_view: slice | None = None
        self._write_pos: torch.Tensor | None = None
        self._kv_len = 0

    # ---- sessions -----------------------------------------------------------------------------
    def open(self, session: str) -> None:
        if session in self._slot_of:
            raise SessionError(f"session {session!r} is already open")
        self._slot_of[session] = len(self._session_at)
        self._session_at.append(session)
        self.lengths.append(0)

    @torch.inference_mode()  # the buffers are inference tensors (allocated inside the forward)
    def close(self, session: str) -> None:
        slot = self._slot_of.pop(session, None)
        if slot is None:
            return
        last = len(self._session_at) - 1
        if slot != last:
            moved = self._session_at[last]
            length = self.lengths[last]
            for buffers in (self._keys, self._values):
                for buf in buffers.values():
                    buf[slot, :, :length] = buf[last, :, :length]
            self._session_at[slot] = moved
            self.lengths[slot] = length
            self._slot_of[moved] = slot
        self._session_at.pop()
        self.lengths.pop()

    def __contains__(self, session: str) -> bool:
        return session in self._slot_of

    def __len__(self) -> int:
        return len(self._session_at)

    def sessions(self) -> list[str]:
        return list(self._session_at)

    def slot(self, session: str) -> int:
        try:
            return self._slot_of[session]
        except KeyError:
            raise SessionError(f"unknown session {session!r}") from None

    def length(self, session: str) -> int:
        return self.lengths[self.slot(session)]

    def truncate(self, session: str, length: int) -> None:
        slot = self.slot(session)
        if not 0 <= length <= self.lengths[slot]:
            raise SessionError(f"cannot truncate session {session!r} of length {self.lengths[slot]} to {length}")
        self.lengths[slot] = length

    # ---- one forward ----------------------------------------------------------------------------
    def begin(self, slots: list[int], width: int) -> torch.Tensor:
        """Prepare a forward writing `width` positions per slot at each slot's length.

        Returns the query positions [R, width]. Lengths are advanced by `width`; the caller truncates
        to the real number of tokens afterwards (padding positions are never read).
        """
        starts = torch.tensor([self.lengths[s] for s in slots], dtype=torch.long)
        positions = starts[:, None] + torch.arange(width)[None, :]
        # padding may reach past the context window; only real tokens are checked (by the model)
        self._kv_len = int(positions.max()) + 1
        self._ensure_capacity(max(slots) + 1, self._kv_len)
        first = slots[0]
        contiguous = slots == list(range(first, first + len(slots)))
        self._batch_view = slice(first, first + len(slots)) if contiguous else None
        self._batch_slots = torch.tensor(slots, dtype=torch.long)
        self._write_pos = positions
        for s in slots:
            self.lengths[s] += width
        return positions

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' cache hook: store [R, kv_heads, width, head_dim] and return the batch's K/V."""
        if layer_idx not in self._keys:
            self._allocate(layer_idx, key, value)
        k_buf, v_buf = self._keys[layer_idx], self._values[layer_idx]
        rows = self._batch_slots[:, None]
        k_buf[rows, :, self._write_pos] = key.transpose(1, 2).to(self.dtype)
        v_buf[rows, :, self._write_pos] = value.transpose(1, 2).to(self.dtype)
        if self._batch_view is not None:
            return k_buf[self._batch_view, :, : self._kv_len], v_buf[self._batch_view, :, : self._kv_len]
        return k_buf[self._batch_slots, :, : self._kv_len], v_buf[self._batch_slots, :, : self._kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len

    @property
    def is_compileable(self) -> bool:  # transformers asks; this cache is not meant for torch.compile
        return False

    # ---- storage --------------------------------------------------------------------------------
    def _allocate(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        shape = (self._slot_capacity, key.shape[1], self._len_capacity)
        self._keys[layer_idx] = torch.zeros(*shape, key.shape[-1], dtype=self.dtype, device=self.device)
        self._values[layer_idx] = torch.zeros(*shape, value.shape[-1], dtype=self.dtype, device=self.device)

    def _ensure_capacity(self, slots: int, length: int) -> None:
        if slots <= self._slot_capacity and length <= self._len_capacity:
            return
        new_slots = max(slots, self._slot_capacity * 2 if slots > self._slot_capacity else self._slot_capacity, 4)
        new_len = max(length, self._len_capacity * 2 if length > self._len_capacity else self._len_capacity, 64)
        for buffers in (self._keys, self._values):
            for layer, buf in buffers.items():
                grown = torch.zeros(new_slots, buf.shape[1], new_len, buf.shape[3], dtype=buf.dtype, device=buf.device)
                grown[: buf.shape[0], :, : buf.shape[2]] = buf
                buffers[layer] = grown
        self._slot_capacity, self._len_capacity = new_slots, new_len

    def memory_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for d in (self._keys, self._values) for b in d.values())
