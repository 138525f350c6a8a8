"""Static confidence-threshold sweep (paper Fig. 5), replayed offline from recorded rounds.

With threshold t a round verifies the longest prefix j whose cumulative confidence `P_j = Π_{i≤j} c_i`
exceeds t, capped at what was drafted: the rule of `decoding.budget.StaticThreshold`. The sweep
replays that rule on rounds that were recorded with a larger budget and reports, per threshold, the
verified tokens per round, their accepted/rejected split, the acceptance rate and the resulting τ.

Why only rounds whose full drafted block was verified: acceptance is decided left to right, so
verifying a shorter prefix j accepts exactly min(j, accepted) tokens of the recorded round, but
beyond the recorded verified length the outcome is unknown. Using every round would bias the sweep
toward whatever budget policy produced the recording; record with `FixedK(γ)` to keep all rounds.
A round ended by an accepted stop token keeps its stop: with j past the stop it commits the same
tokens without a bonus, and the verified tokens after the stop count as rejected (wasted verification).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from specserve.engine.request import RoundRecord
from specserve.eval.acceptance import ended_by_stop
from specserve.eval.calibration import apply_temperatures

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))  # 0.0 .. 0.95


@dataclass(frozen=True)
class ThresholdPoint:
    """Replayed outcome at one threshold; per-round values are means over the rounds used."""

    threshold: float
    verified_per_round: float
    accepted_per_round: float
    rejected_per_round: float
    acceptance_rate: float | None  # accepted / verified (None when nothing is verified)
    tau: float  # committed tokens per round under this threshold


@dataclass(frozen=True)
class ThresholdSweep:
    """The sweep over thresholds, with how many rounds could be replayed."""

    points: list[ThresholdPoint]
    rounds_used: int  # rounds with confidences whose full drafted block was verified
    rounds_skipped: int  # rounds without confidences or verified below what was drafted

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def _eligible(r: RoundRecord) -> bool:
    return r.confidence is not None and r.drafted > 0 and r.verified == r.drafted and len(r.confidence) >= r.drafted


def threshold_sweep(rounds: Iterable[RoundRecord], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    temperatures: Sequence[float] | None = None) -> ThresholdSweep:
    """Replay a static cumulative-confidence threshold on full-block rounds (STS `temperatures` applied first).

    Raises ValueError when no round qualifies (no confidences, or no round verified its whole block).
    """
    rounds = list(rounds)
    used = [r for r in rounds if _eligible(r)]
    if not used:
        raise ValueError(f"none of {len(rounds)} rounds has confidences and a fully verified block; record the "
                         "rounds with a fixed full-block budget and a drafter with a confidence head")
    width = max(r.drafted for r in used)
    raw = np.full((len(used), width), np.nan)
    for row, r in enumerate(used):
        raw[row, : r.drafted] = r.confidence[: r.drafted]
    survival = np.cumprod(np.nan_to_num(apply_temperatures(raw, temperatures), nan=0.0), axis=1)
    accepted = np.array([r.accepted for r in used])
    stopped = np.array([ended_by_stop(r) for r in used])
    points = []
    for t in thresholds:
        verified = (survival > t).sum(axis=1)  # survival never rises along a block, so this is the prefix
        acc = np.minimum(verified, accepted)
        committed = np.where(stopped & (verified >= accepted), acc, acc + 1)
        points.append(ThresholdPoint(
            threshold=float(t), verified_per_round=float(verified.mean()), accepted_per_round=float(acc.mean()),
            rejected_per_round=float((verified - acc).mean()),
            acceptance_rate=float(acc.sum() / verified.sum()) if verified.sum() else None,
            tau=float(committed.mean())))
    return ThresholdSweep(points=points, rounds_used=len(used), rounds_skipped=len(rounds) - len(used))
