"""Write the offline target-feature cache: sharded raw arrays, an index, and a manifest written last.

Layout of a cache folder:

    manifest.json          format, version, target fingerprint, tap set, storage mode, fields, counts
    index.npy              int64 [rows, 4]: shard, token offset in the shard, length, source row index
    shard_00000/<field>.bin  one raw little-endian array per field, token-major: [tokens, width]

A shard is written in a hidden temporary folder and renamed into place when full; `index.npy` and
`manifest.json` are replaced atomically, the manifest last. A folder without a manifest is therefore
an interrupted build, never a cache a reader would accept. Every field is readable with `np.memmap`.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from specserve.data.atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from specserve.data.errors import CacheFormatError
from specserve.data.features import check_tap_layers, target_features
from specserve.data.fingerprint import TargetFingerprint, fingerprint
from specserve.data.storage import StorageMode, encode
from specserve.data.tokenization import TokenizedRow

log = logging.getLogger(__name__)

FORMAT = "specserve-feature-cache"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.npy"
_OUR_PREFIXES = ("shard_", ".shard_", f".{INDEX}", f".{MANIFEST}")


def shard_name(i: int) -> str:
    """Folder name of shard `i`."""
    return f"shard_{i:05d}"


class CacheWriter:
    """Appends rows of (ids, loss mask, features) to shards; `finish` writes the index and the manifest."""

    def __init__(self, out_dir: str | Path, target: TargetFingerprint, mode: StorageMode,
                 shard_bytes: int = 1 << 30, overwrite: bool = False, source: dict | None = None):
        self.dir = Path(out_dir)
        self.target, self.mode = target, mode
        self.num_taps = len(target.target_layer_ids)
        self.fields = mode.fields(target.hidden_size, self.num_taps)
        self.bytes_per_token = mode.bytes_per_token(target.hidden_size, self.num_taps)
        self.shard_tokens = max(1, shard_bytes // self.bytes_per_token)
        self.source = source or {}
        _prepare(self.dir, overwrite)
        self.index: list[tuple[int, int, int, int]] = []
        self.shards: list[dict] = []
        self.supervised = 0
        self._files: dict[str, object] = {}
        self._shard_len = 0
        self._shard_rows = 0

    def add(self, row: TokenizedRow, taps, final_hidden=None) -> None:
        """Append one row; `taps` [L, m*H] and `final_hidden` [L, H] (any float dtype, any device)."""
        length = len(row.input_ids)
        if taps.shape[0] != length or (final_hidden is not None and final_hidden.shape[0] != length):
            raise ValueError(f"row {row.index}: features cover {taps.shape[0]} tokens, the row has {length}")
        if self.mode.stores_final and final_hidden is None:
            raise ValueError(f"storage mode {self.mode.name} stores the final hidden state; none was given")
        if self._files and self._shard_len + length > self.shard_tokens:
            self._close_shard()
        if not self._files:
            self._open_shard()
        arrays = {"input_ids": row.input_ids.astype(np.int32), "loss_mask": row.loss_mask.astype(np.uint8)}
        for key, value in encode(taps, self.mode.taps, self.num_taps).items():
            arrays[f"taps{key}"] = value
        if self.mode.stores_final:
            for key, value in encode(final_hidden, self.mode.final, 1).items():
                arrays[f"final_hidden{key}"] = value
        for f in self.fields:
            data = np.ascontiguousarray(arrays[f.name], dtype=f.dtype)
            self._files[f.name].write(data.reshape(length, f.width).tobytes())
        self.index.append((len(self.shards), self._shard_len, length, row.index))
        self._shard_len += length
        self._shard_rows += 1
        self.supervised += int(row.loss_mask.sum())

    def finish(self) -> dict:
        """Close the last shard, write `index.npy`, then `manifest.json`. Returns the manifest."""
        if self._files:
            self._close_shard()
        index = np.asarray(self.index, dtype=np.int64).reshape(-1, 4)
        buffer = io.BytesIO()
        np.save(buffer, index)
        atomic_write_bytes(self.dir / INDEX, buffer.getvalue())
        tokens = int(index[:, 2].sum()) if len(index) else 0
        manifest = {"format": FORMAT, "version": VERSION, "target": self.target.to_json(),
                    "target_layer_ids": list(self.target.target_layer_ids),
                    "storage": {"taps": self.mode.taps, "final": self.mode.final},
                    "fields": {f.name: {"dtype": f.dtype, "width": f.width} for f in self.fields},
                    "rows": len(index), "tokens": tokens, "supervised_tokens": self.supervised,
                    "bytes_per_token": self.bytes_per_token, "source": self.source, "shards": self.shards}
        atomic_write_json(self.dir / MANIFEST, manifest)
        log.info("feature cache %s: %d rows, %d tokens, %d shards, %d B/token (%s), %.1f MiB", self.dir,
                 len(index), tokens, len(self.shards), self.bytes_per_token, self.mode.name,
                 tokens * self.bytes_per_token / 2**20)
        return manifest

    def _open_shard(self) -> None:
        tmp = self.dir / f".{shard_name(len(self.shards))}.tmp"
        tmp.mkdir()
        self._files = {f.name: open(tmp / f"{f.name}.bin", "wb") for f in self.fields}
        self._shard_len = self._shard_rows = 0

    def _close_shard(self) -> None:
        name = shard_name(len(self.shards))
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._files = {}
        os.replace(self.dir / f".{name}.tmp", self.dir / name)
        fsync_dir(self.dir)
        self.shards.append({"name": name, "rows": self._shard_rows, "tokens": self._shard_len})


def _prepare(out: Path, overwrite: bool) -> None:
    """Create `out`, or clear a previous cache in it with `overwrite`; never delete files we did not write."""
    if out.exists() and any(out.iterdir()):
        entries = list(out.iterdir())
        ours = [e for e in entries if e.name in (MANIFEST, INDEX) or e.name.startswith(_OUR_PREFIXES)]
        state = "a feature cache" if (out / MANIFEST).exists() else "an interrupted cache build (no manifest)"
        if not overwrite:
            raise CacheFormatError(f"{out} already holds {state}; pass --overwrite to replace it "
                                   f"or choose another output folder")
        if len(ours) != len(entries):
            strangers = sorted(e.name for e in entries if e not in ours)[:5]
            raise CacheFormatError(f"{out} holds files that are not part of a feature cache ({strangers}); "
                                   f"refusing to overwrite it")
        (out / MANIFEST).unlink(missing_ok=True)  # first, so a crash mid-cleanup leaves no valid-looking cache
        for e in ours:
            if e.is_dir():
                shutil.rmtree(e)
            else:
                e.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def build_cache(target, rows: Iterable[TokenizedRow], out_dir: str | Path, target_layer_ids, mode: StorageMode,
                name: str = "", shard_bytes: int = 1 << 30, overwrite: bool = False, total: int | None = None,
                source: dict | None = None, progress: bool = True) -> dict:
    """Run `target` (a CausalLM) over every row (one forward per row) and write the cache. Returns the manifest.

    Rows without any supervised token are skipped (they carry no loss) and counted in the log. `source`
    (data file, its hash, split, max length ...) is recorded in the manifest as provenance.
    """
    layer_ids = check_tap_layers(target_layer_ids, target.num_layers)
    writer = CacheWriter(out_dir, fingerprint(target, layer_ids, name), mode, shard_bytes, overwrite, source)
    unsupervised = 0
    for row in tqdm(rows, total=total, unit="row", desc="cache", disable=not progress):
        if not row.loss_mask.any():
            unsupervised += 1
            continue
        taps, final = target_features(target, row.input_ids.tolist(), layer_ids, mode.stores_final)
        writer.add(row, taps, final)
    if unsupervised:
        log.warning("skipped %d rows without supervised tokens", unsupervised)
    return writer.finish()
