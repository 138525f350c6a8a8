"""Sequential Temperature Scaling (STS) of a draft's confidence head, and its sidecar file.

Fit (algorithms.md section 6): on held-out rounds, for k = 1..γ in order, grid-search one temperature
`T_k` for `c_k = σ(logit(c_k) / T_k)` minimising the ECE of the cumulative product `P_k = Π_{i≤k} c_i`
with `T_1..T_{k−1}` already fixed. Each `T_k` is a monotone map of slot k, so the per-slot ranking is
unchanged (see `calibration` for what that means for the cumulative AUROC).

Storage: a sidecar `calibration.json` in the draft checkpoint folder (next to `config.json`, which stays
byte-compatible with DeepSpec checkpoints; DeepSpec defines no format for temperatures):

    {
      "format": "specserve-sts-v1",
      "temperatures": [T_1, ..., T_γ],      # positive floats; slot k of a block uses T_k, later slots T = 1
      "fitted_on": {...},                   # provenance: rounds, rounds_per_position, n_bins, grid, and what
                                            #   the caller adds (target, benchmarks, limit, seed, temperature)
      "ece_before": [ECE_1, ..., ECE_γ],    # ECE of the raw P_k on the fitting rounds
      "ece_after": [ECE_1, ..., ECE_γ]      # ECE of the scaled P_k on the same rounds (in-sample)
    }

A drafter applies the temperatures with `apply_temperatures` (numpy or torch) to its raw per-slot confidences before
handing them to the budget policy; a folder without the file means an uncalibrated head (T = 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specserve.engine.request import RoundRecord
from specserve.errors import ModelLoadError
from specserve.eval.acceptance import observed_length
from specserve.eval.calibration import CONFIDENCE_EPS, DEFAULT_BINS, apply_temperatures, ece, position_samples

SIDECAR_NAME = "calibration.json"
FORMAT = "specserve-sts-v1"
__all__ = ["DEFAULT_GRID", "FORMAT", "SIDECAR_NAME", "STSCalibration", "apply_temperatures", "fit_sts",
           "load_calibration", "save_calibration"]

DEFAULT_GRID: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.05, 20.0, 241))  # includes T = 1


@dataclass(frozen=True)
class STSCalibration:
    """Fitted per-position temperatures and the evidence they were fitted on (the sidecar's content)."""

    temperatures: tuple[float, ...]
    fitted_on: dict = field(default_factory=dict)
    ece_before: tuple[float, ...] = ()
    ece_after: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        """The sidecar JSON object."""
        return {"format": FORMAT, "temperatures": list(self.temperatures), "fitted_on": self.fitted_on,
                "ece_before": list(self.ece_before), "ece_after": list(self.ece_after)}

    @classmethod
    def from_dict(cls, raw: object, source: str = SIDECAR_NAME) -> STSCalibration:
        """Validate a sidecar object; errors name `source` and the offending field."""
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise ModelLoadError(f"{source}: field 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
        temps = raw.get("temperatures")
        if not isinstance(temps, list) or not temps or not all(_positive_number(t) for t in temps):
            raise ModelLoadError(f"{source}: field 'temperatures' must be a non-empty list of positive finite "
                                 f"numbers, got {temps!r}")
        fitted_on = raw.get("fitted_on", {})
        if not isinstance(fitted_on, dict):
            raise ModelLoadError(f"{source}: field 'fitted_on' must be an object, got {fitted_on!r}")
        eces = {}
        for name in ("ece_before", "ece_after"):
            values = raw.get(name, [])
            if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
                raise ModelLoadError(f"{source}: field {name!r} must be a list of numbers, got {values!r}")
            eces[name] = tuple(float(v) for v in values)
        return cls(temperatures=tuple(float(t) for t in temps), fitted_on=fitted_on, **eces)


def _logit(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, CONFIDENCE_EPS, 1.0 - CONFIDENCE_EPS)  # apply_temperatures clamps alike: fit matches inference
    return np.log(c / (1.0 - c))


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def fit_sts(rounds: Iterable[RoundRecord], grid: Sequence[float] = DEFAULT_GRID, n_bins: int = DEFAULT_BINS,
            fitted_on: dict | None = None) -> STSCalibration:
    """Fit T_1..T_γ left to right on `rounds` (held out from training), one per observed position.

    Each T_k minimises the ECE of P_k over the rounds observing position k; ties go to the temperature
    closest to 1. Raises ValueError when no round carries confidences.
    """
    if not grid or min(grid) <= 0:
        raise ValueError(f"grid must be a non-empty list of positive temperatures, got {grid!r}")
    rounds = [r for r in rounds if r.confidence is not None]
    width = max((min(len(r.confidence), observed_length(r)) for r in rounds), default=0)
    if width == 0:
        raise ValueError("no verified round carries confidences; STS needs a drafter with a confidence head")
    candidates = sorted(grid, key=lambda t: (abs(math.log(t)), t))
    temps: list[float] = []
    before, after, counts = [], [], []
    for k in range(1, width + 1):
        conf, accepted = position_samples(rounds, k)
        label = accepted >= k
        earlier = np.prod(apply_temperatures(conf[:, :-1], temps), axis=1)
        z = _logit(conf[:, -1])
        errors = [ece(earlier / (1.0 + np.exp(-z / t)), label, n_bins) for t in candidates]
        best = int(np.argmin(errors))
        temps.append(float(candidates[best]))
        before.append(ece(np.prod(conf, axis=1), label, n_bins))
        after.append(float(errors[best]))
        counts.append(len(label))
    provenance = {"rounds": len(rounds), "rounds_per_position": counts, "n_bins": n_bins,
                  "grid": {"min": float(min(grid)), "max": float(max(grid)), "points": len(grid)}}
    provenance.update(fitted_on or {})
    return STSCalibration(temperatures=tuple(temps), fitted_on=provenance,
                          ece_before=tuple(before), ece_after=tuple(after))


def save_calibration(folder: str | Path, calibration: STSCalibration) -> Path:
    """Write `calibration.json` into the draft checkpoint `folder`; returns its path."""
    path = Path(folder) / SIDECAR_NAME
    path.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    return path


def load_calibration(folder: str | Path) -> STSCalibration | None:
    """Read `calibration.json` from a draft checkpoint folder; None when the head was never calibrated."""
    path = Path(folder) / SIDECAR_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from exc
    return STSCalibration.from_dict(raw, source=str(path))
