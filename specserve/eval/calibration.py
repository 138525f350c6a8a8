"""Confidence quality per draft position: ECE, AUROC, Brier and reliability diagrams.

The confidence head's `c_j` estimates the probability that slot j is accepted given all earlier slots
were, so the prefix survival `P_k = Π_{i≤k} c_i` estimates the probability that the round accepts at
least k tokens (algorithms.md sections 3 and 6). At position k the sample is every round with
confidences in which position k was observed (`acceptance.observed_length` ≥ k, i.e. verified and not
past an accepted stop token); prediction `P_k`, label "accepted ≥ k".

The sample depends on the verification budget: under a confidence-driven policy (static threshold,
prefix scheduler) low-confidence rounds stop early and are missing at late positions. Calibrate on
rounds evaluated with a fixed full-block budget (`FixedK(γ)`) to measure the head itself.

`auroc_conditional` scores the per-slot `c_k` against acceptance of slot k among rounds that accepted
all earlier slots: it is the ranking that a per-position monotone rescaling (STS) provably leaves
unchanged. The AUROC of the cumulative `P_k` for k ≥ 2 can move slightly under STS, because rescaling
the factors by different temperatures can reorder products across rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from specserve.engine.request import RoundRecord
from specserve.eval.acceptance import observed_length

DEFAULT_BINS = 20
CONFIDENCE_EPS = 1e-7  # keeps logits finite when a head returns exactly 0 or 1


def ece(pred: np.ndarray, label: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with `n_bins` equal-width bins on [0, 1] (the last bin includes 1.0).

    Σ_b (n_b / n) · |mean prediction_b − accuracy_b|. 0.0 for an empty sample.
    """
    pred, label = np.asarray(pred, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if pred.size == 0:
        return 0.0
    bins = np.minimum((pred * n_bins).astype(np.int64), n_bins - 1)
    sum_pred = np.bincount(bins, weights=pred, minlength=n_bins)
    sum_label = np.bincount(bins, weights=label, minlength=n_bins)
    return float(np.abs(sum_pred - sum_label).sum() / pred.size)


def brier(pred: np.ndarray, label: np.ndarray) -> float:
    """Mean squared error of the probability against the 0/1 outcome. 0.0 for an empty sample."""
    pred, label = np.asarray(pred, dtype=np.float64), np.asarray(label, dtype=np.float64)
    return float(np.mean((pred - label) ** 2)) if pred.size else 0.0


def auroc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann–Whitney U statistic, ties counted as one half.

    None when the sample lacks positives or negatives (the AUROC is undefined).
    """
    score, label = np.asarray(score, dtype=np.float64), np.asarray(label, dtype=bool)
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank, averaged over a tie group
    rank_sum = average_rank[inverse][label].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram; `mean_confidence`/`accuracy` are None for empty bins."""

    edges: list[float]  # n_bins + 1 bin edges on [0, 1]
    counts: list[int]
    mean_confidence: list[float | None]
    accuracy: list[float | None]


def reliability(pred: np.ndarray, label: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityDiagram:
    """Bin the predictions as `ece` does and report each bin's count, mean prediction and accuracy."""
    pred, label = np.asarray(pred, dtype=np.float64), np.asarray(label, dtype=np.float64)
    bins = np.minimum((pred * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    sum_pred = np.bincount(bins, weights=pred, minlength=n_bins)
    sum_label = np.bincount(bins, weights=label, minlength=n_bins)
    mean = [float(s / c) if c else None for s, c in zip(sum_pred, counts, strict=True)]
    acc = [float(s / c) if c else None for s, c in zip(sum_label, counts, strict=True)]
    return ReliabilityDiagram(edges=np.linspace(0.0, 1.0, n_bins + 1).tolist(), counts=counts.tolist(),
                              mean_confidence=mean, accuracy=acc)


def apply_temperatures(confidence: np.ndarray | torch.Tensor, temperatures: Sequence[float] | None):
    """STS scaling of raw per-slot confidences `[..., γ]`: `σ(logit(c_k) / T_k)` along the last axis.

    Slots beyond `temperatures` keep T = 1; None or [] returns the input unchanged. numpy in, float64
    numpy out; a torch tensor keeps its dtype and device (the drafter applies this at inference).
    """
    is_tensor = isinstance(confidence, torch.Tensor)
    c = confidence if is_tensor else torch.from_numpy(np.asarray(confidence, dtype=np.float64))
    if temperatures is None or len(temperatures) == 0:
        return confidence if is_tensor else c.numpy()
    width = c.shape[-1]
    t = torch.ones(width, dtype=torch.float64, device=c.device)
    n = min(width, len(temperatures))
    t[:n] = torch.tensor([float(x) for x in temperatures[:n]], dtype=torch.float64)
    scaled = torch.sigmoid(torch.logit(c.double(), eps=CONFIDENCE_EPS) / t)
    return scaled.to(confidence.dtype) if is_tensor else scaled.numpy()


def position_samples(rounds: Iterable[RoundRecord], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw confidences `[n, k]` of slots 1..k and accepted counts `[n]` of the rounds observing position k."""
    rows = [r for r in rounds if r.confidence is not None and len(r.confidence) >= k and observed_length(r) >= k]
    conf = np.array([r.confidence[:k] for r in rows], dtype=np.float64).reshape(len(rows), k)
    return conf, np.array([r.accepted for r in rows], dtype=np.int64)


@dataclass(frozen=True)
class PositionCalibration:
    """Confidence quality at draft position k (1-based) of `P_k` against "accepted ≥ k"."""

    position: int
    n: int  # rounds observing position k
    positive_rate: float | None  # observed prefix acceptance at k
    mean_prediction: float | None  # mean P_k
    ece: float
    brier: float
    auroc: float | None
    auroc_conditional: float | None  # c_k vs acceptance of k, among rounds that accepted 1..k−1
    reliability: ReliabilityDiagram


def position_calibration(conf: np.ndarray, accepted: np.ndarray, n_bins: int = DEFAULT_BINS) -> PositionCalibration:
    """Metrics at position k = conf.shape[1] from (already temperature-scaled) slot confidences `[n, k]`."""
    k = conf.shape[1]
    pred, label = np.prod(conf, axis=1), accepted >= k
    reached = accepted >= k - 1
    return PositionCalibration(
        position=k, n=len(label),
        positive_rate=float(label.mean()) if len(label) else None,
        mean_prediction=float(pred.mean()) if len(pred) else None,
        ece=ece(pred, label, n_bins), brier=brier(pred, label), auroc=auroc(pred, label),
        auroc_conditional=auroc(conf[reached, k - 1], label[reached]),
        reliability=reliability(pred, label, n_bins))


@dataclass(frozen=True)
class CalibrationReport:
    """Confidence quality of one drafter on one set of rounds, per draft position."""

    positions: list[PositionCalibration]  # empty when no round carries confidences
    n_bins: int
    temperatures: list[float] | None  # STS temperatures applied before measuring (None: raw head)

    @property
    def ece(self) -> list[float]:
        """ECE per position, for tables and before/after comparisons."""
        return [p.ece for p in self.positions]

    @property
    def auroc(self) -> list[float | None]:
        """AUROC of P_k per position."""
        return [p.auroc for p in self.positions]

    def to_dict(self) -> dict:
        """JSON-ready dict (reliability bins included)."""
        return asdict(self)


def calibration_report(rounds: Iterable[RoundRecord], temperatures: Sequence[float] | None = None,
                       n_bins: int = DEFAULT_BINS) -> CalibrationReport:
    """ECE, Brier, AUROC and reliability data of `P_k` for every position some round observed.

    `temperatures` (from STS) are applied to the raw confidences first. Rounds without confidences
    (n-gram, DFlash, Eagle3 drafters) are skipped; with none at all the report has no positions.
    """
    rounds = [r for r in rounds if r.confidence is not None]
    width = max((min(len(r.confidence), observed_length(r)) for r in rounds), default=0)
    positions = []
    for k in range(1, width + 1):
        conf, accepted = position_samples(rounds, k)
        positions.append(position_calibration(apply_temperatures(conf, temperatures), accepted, n_bins))
    return CalibrationReport(positions=positions, n_bins=n_bins,
                             temperatures=None if temperatures is None else [float(t) for t in temperatures])
