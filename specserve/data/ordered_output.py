"""An append-only JSONL output written in input order, resumable after a crash at any instant.

Rows are appended to `OUT` in order; every `sync_every` rows the file is fsynced and then the progress
file `OUT.progress.json` is replaced atomically with the number of rows and bytes that are durable.
Resuming validates the progress file's identity (input hash and settings), truncates `OUT` to the
recorded byte count (dropping a partial last line and any row written after the last sync), and
continues from the recorded row. Because rows are only ever written in order, the durable prefix is
always exactly the first `rows_done` rows of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from specserve.data.atomic import atomic_write_json, fsync_dir
from specserve.data.errors import ResumeMismatchError

log = logging.getLogger(__name__)

PROGRESS_VERSION = 1


def progress_path(out: str | Path) -> Path:
    """`OUT.progress.json`: where the durable row and byte counts of `OUT` are recorded."""
    out = Path(out)
    return out.with_name(out.name + ".progress.json")


class OrderedJsonlWriter:
    """Writes rows (dicts) in order to a JSONL file; `rows_done` says where a resumed run starts.

    `identity` is everything the output depends on (input hash, sampling settings, target ...); a
    resume with a different identity is refused with `ResumeMismatchError`, as is an existing output
    without a progress file, unless `overwrite`.
    """

    def __init__(self, out: str | Path, identity: dict, sync_every: int = 16, overwrite: bool = False):
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.path = Path(out)
        self.progress = progress_path(out)
        self.identity = json.loads(json.dumps(identity))  # normalised as it will be read back
        self.sync_every = sync_every
        self.rows_done, self.bytes, self.complete = 0, 0, False
        self._synced_rows = 0
        if overwrite or not self.progress.exists():
            self._start_fresh(overwrite)
        else:
            self._resume()
        self._file = open(self.path, "ab")

    def _start_fresh(self, overwrite: bool) -> None:
        if self.path.exists() and self.path.stat().st_size > 0 and not overwrite:
            raise ResumeMismatchError(f"{self.path} exists but has no progress file {self.progress.name}, so it "
                                      f"was not written by a resumable run; remove it, choose another output, "
                                      f"or pass --overwrite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:
            os.fsync(f.fileno())
        fsync_dir(self.path.parent)
        self._write_progress()

    def _resume(self) -> None:
        state = json.loads(self.progress.read_text())
        if state.get("version") != PROGRESS_VERSION:
            raise ResumeMismatchError(f"{self.progress}: unknown progress format {state.get('version')!r}")
        if state["identity"] != self.identity:
            old, new = state["identity"], self.identity
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in keys)
            raise ResumeMismatchError(f"{self.path} was started with other settings ({detail}); resume with the "
                                      f"same input and options, or pass --overwrite to start over")
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < state["bytes"]:
            raise ResumeMismatchError(f"{self.path} holds {size} bytes but its progress file records "
                                      f"{state['bytes']}: the output was modified; pass --overwrite to start over")
        if size > state["bytes"]:
            log.info("%s: dropping %d bytes written after the last sync", self.path, size - state["bytes"])
            os.truncate(self.path, state["bytes"])
        self.rows_done = self._synced_rows = state["rows_done"]
        self.bytes, self.complete = state["bytes"], state["complete"]
        log.info("%s: resuming after %d rows%s", self.path, self.rows_done, " (complete)" if self.complete else "")

    def write(self, row: dict) -> None:
        """Append the next row (in input order)."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        self._file.write(line)
        self.rows_done += 1
        self.bytes += len(line)
        if self.rows_done - self._synced_rows >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        """Make every written row durable and record it in the progress file."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._write_progress()
        self._synced_rows = self.rows_done

    def finish(self) -> None:
        """Mark the output complete (a later resume does nothing) and close it."""
        self.complete = True
        self.sync()
        self.close()

    def close(self) -> None:
        """Close without syncing (rows after the last sync are redone on resume)."""
        if not self._file.closed:
            self._file.close()

    def _write_progress(self) -> None:
        atomic_write_json(self.progress, {"version": PROGRESS_VERSION, "identity": self.identity,
                                          "rows_done": self.rows_done, "bytes": self.bytes,
                                          "complete": self.complete})

    def __enter__(self) -> OrderedJsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        # also on an exception: every counted row is complete, and bytes past the count are dropped on resume
        if not self._file.closed:
            self.sync()
        self.close()
