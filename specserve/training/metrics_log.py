"""The metrics log of rank 0: one JSON object per logging step in `metrics.jsonl`, and TensorBoard events.

On resume the records past the resumed step (written after the checkpoint, before the interruption)
are dropped, so the log reads as if the run had never stopped. TensorBoard is optional (the
`specserve[tensorboard]` extra): `logging.tensorboard = null` writes events when the package is
installed and warns when it is not, `true` makes a missing package an error before training starts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from specserve.data.atomic import atomic_write_bytes
from specserve.errors import InvalidRequestError

log = logging.getLogger(__name__)

JSONL = "metrics.jsonl"
INSTALL_HINT = "pip install 'specserve[tensorboard]'"


def summary_writer_class(tensorboard: bool | None) -> type | None:
    """torch's `SummaryWriter` when TensorBoard logging is on and possible, else None.

    `tensorboard`: the `logging.tensorboard` setting (None: when installed; True: required; False: off).
    """
    if tensorboard is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        if tensorboard:
            raise InvalidRequestError("logging.tensorboard", f"is true, but the tensorboard package is not "
                                      f"installed: {INSTALL_HINT}, or set it to null (TensorBoard when installed) "
                                      "or false (metrics.jsonl only)") from None
        return None
    return SummaryWriter


class MetricsLog:
    """Append-only metrics of one run (no-op on ranks other than 0)."""

    def __init__(self, root: str | Path, enabled: bool = True, tensorboard: bool | None = None, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(root) / JSONL
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        writer_class = summary_writer_class(tensorboard)
        if writer_class is not None:
            self.writer = writer_class(str(Path(root) / "tensorboard"), purge_step=resume_step + 1)
        elif tensorboard is None:
            log.warning("the tensorboard package is not installed (%s); metrics go to %s only", INSTALL_HINT,
                        self.path)

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
