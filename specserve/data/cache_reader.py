"""Read the offline feature cache with `np.memmap`: only the rows a batch asks for are paged in.

Opening a cache checks it completely before any training step: format and version, that every shard
file has exactly the size the manifest implies (a truncated copy fails here, not mid-epoch), and,
given the training run's own `TargetFingerprint`, that it was built for the same target config and
weights, tap set and tokenizer (`CacheMismatchError` names the difference).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from specserve.data.cache_writer import FORMAT, INDEX, MANIFEST, VERSION
from specserve.data.errors import CacheFormatError, CacheMismatchError
from specserve.data.features import FeatureBatch, FeatureRow, collate
from specserve.data.fingerprint import TargetFingerprint
from specserve.data.storage import StorageMode, decode


class FeatureCache:
    """A `FeatureSource` over a cache folder. `expect`: the fingerprint the run needs (None: no check)."""

    def __init__(self, path: str | Path, expect: TargetFingerprint | None = None, require_final: bool = False):
        self.path = Path(path)
        self.manifest = _load_manifest(self.path)
        self.target = TargetFingerprint.from_json(self.manifest["target"])
        self.mode = StorageMode(**self.manifest["storage"])
        if expect is not None:
            self.target.check_matches(expect)
        if require_final and not self.mode.stores_final:
            raise CacheMismatchError("stored fields", "taps + final hidden", f"taps only ({self.mode.name})")
        self.num_taps = len(self.target.target_layer_ids)
        self.fields = {name: (np.dtype(spec["dtype"]), int(spec["width"]))
                       for name, spec in self.manifest["fields"].items()}
        self.index = np.load(self.path / INDEX, mmap_mode="r")
        if self.index.shape != (self.manifest["rows"], 4):
            raise CacheFormatError(f"{self.path / INDEX}: shape {self.index.shape}, the manifest says "
                                   f"{self.manifest['rows']} rows")
        self._shards = [self._map_shard(s) for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_tokens(self) -> int:
        """Tokens in the cache (all rows)."""
        return int(self.manifest["tokens"])

    def lengths(self) -> np.ndarray:
        """Tokens per row (for length-bucketed batching)."""
        return np.asarray(self.index[:, 2])

    def row(self, i: int) -> FeatureRow:
        """Row `i` as float32 tensors on the CPU (dequantised when stored in bf16/fp8)."""
        shard, start, length, source = (int(v) for v in self.index[i])
        arrays = self._shards[shard]
        span = slice(start, start + length)
        taps = decode(arrays["taps"][span], _get(arrays, "taps_scale", span), self.mode.taps, self.num_taps)
        final = None
        if self.mode.stores_final:
            final = decode(arrays["final_hidden"][span], _get(arrays, "final_hidden_scale", span), self.mode.final, 1)
        return FeatureRow(index=source, input_ids=torch.from_numpy(arrays["input_ids"][span, 0].astype(np.int64)),
                          loss_mask=torch.from_numpy(arrays["loss_mask"][span, 0].astype(np.int64)),
                          taps=taps, final_hidden=final)

    def batch(self, indices: Sequence[int]) -> FeatureBatch:
        """Rows `indices`, right-padded into one batch."""
        return collate([self.row(int(i)) for i in indices])

    def _map_shard(self, shard: dict) -> dict[str, np.memmap]:
        folder = self.path / shard["name"]
        tokens = int(shard["tokens"])
        arrays = {}
        for name, (dtype, width) in self.fields.items():
            file = folder / f"{name}.bin"
            expected = tokens * width * dtype.itemsize
            size = file.stat().st_size if file.exists() else -1
            if size != expected:
                raise CacheFormatError(f"{file}: {'missing' if size < 0 else f'{size} bytes'}, the manifest implies "
                                       f"{expected}; the cache is incomplete or corrupt, rebuild it")
            arrays[name] = np.memmap(file, dtype=dtype, mode="r", shape=(tokens, width)) if tokens else \
                np.zeros((0, width), dtype=dtype)
        return arrays


def _get(arrays: dict, name: str, span: slice):
    return arrays[name][span] if name in arrays else None


def _load_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.exists():
        state = "an interrupted build (no manifest)" if path.exists() else "missing"
        raise CacheFormatError(f"{path} is not a feature cache: {state}; build one with `specserve data cache`")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CacheFormatError(f"{file}: invalid JSON ({exc.msg})") from None
    if manifest.get("format") != FORMAT:
        raise CacheFormatError(f"{file}: not a specserve feature cache (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise CacheFormatError(f"{file}: cache format version {manifest.get('version')!r}; this specserve reads "
                               f"version {VERSION}; rebuild the cache")
    return manifest
