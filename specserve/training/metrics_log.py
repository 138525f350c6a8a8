"""The metrics log of rank 0: one JSON object per logging step in `metrics.jsonl`, and TensorBoard events.

On resume the records past the resumed step (written after the checkpoint, before the interruption)
are dropped, so the log reads as if the run had never stopped. TensorBoard is optional: without the
`tensorboard` package only the JSONL log is written (and a warning says so).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from specserve.data.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

JSONL = "metrics.jsonl"


class MetricsLog:
    """Append-only metrics of one run (no-op on ranks other than 0)."""

    def __init__(self, root: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(root) / JSONL
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(root) / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to %s only", self.path)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def write(self, step: int, values: dict[str, float]) -> None:
        """Record `values` (names like `train/ce_loss`) at optimizer step `step`."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
