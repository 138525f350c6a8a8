"""The metrics log: JSONL always, TensorBoard events when the optional package is there or required."""

from __future__ import annotations

import json
import sys

import pytest

from specserve.errors import InvalidRequestError
from specserve.training.metrics_log import MetricsLog


@pytest.fixture
def without_tensorboard(monkeypatch):
    """Make `from torch.utils.tensorboard import SummaryWriter` fail as it does without the package."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_required_tensorboard_that_is_missing_names_the_setting_and_the_extra(tmp_path, without_tensorboard):
    with pytest.raises(InvalidRequestError, match=r"logging\.tensorboard.*specserve\[tensorboard\]"):
        MetricsLog(tmp_path, tensorboard=True)


def test_optional_tensorboard_that_is_missing_logs_jsonl_only(tmp_path, without_tensorboard, caplog):
    metrics = MetricsLog(tmp_path, tensorboard=None)
    metrics.write(1, {"train/loss": 2.5})
    metrics.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "train/loss": 2.5}
    assert not (tmp_path / "tensorboard").exists()
    assert "specserve[tensorboard]" in caplog.text


def test_installed_tensorboard_gets_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = MetricsLog(tmp_path, tensorboard=None)
    metrics.write(1, {"train/loss": 2.5})
    metrics.write(2, {"train/loss": 1.5})
    metrics.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]
