"""The demo corpus: Python's own standard library source, present on every machine with Python.

Files are listed in sorted order and split into train / held-out by a hash of their relative path,
so the split is stable whatever the file system's order. Test suites and site-packages are left out.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Corpus:
    root: Path
    train: list[Path]
    heldout: list[Path]

    def fingerprint(self) -> str:
        """A hash of the file names and contents, recorded with the bundle so a rebuild can be compared."""
        h = hashlib.sha256()
        for path in self.train + self.heldout:
            h.update(str(path.relative_to(self.root)).encode())
            h.update(path.read_bytes())
        return h.hexdigest()[:16]


def stdlib_corpus(heldout_percent: int = 5, root: str | None = None) -> Corpus:
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in base.rglob("*.py") if not _excluded(p.relative_to(base)))
    train, heldout = [], []
    for path in files:
        bucket = int(hashlib.sha256(str(path.relative_to(base)).encode()).hexdigest(), 16) % 100
        (heldout if bucket < heldout_percent else train).append(path)
    return Corpus(base, train, heldout)


def _excluded(rel: Path) -> bool:
    parts = rel.parts
    return any(p in ("site-packages", "test", "tests", "idle_test", "__pycache__") for p in parts)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
