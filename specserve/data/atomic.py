"""Crash-safe file updates: write a temporary file, fsync it, rename it over the target, fsync the folder.

After a crash a reader sees either the old file or the new one, never a mix (POSIX `rename` is atomic
within a file system). Used for progress files, cache shards, indexes and manifests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename or file creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj) -> None:
    """Replace `path` with `obj` as indented JSON, atomically and durably."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
