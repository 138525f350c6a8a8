"""PNG plots of an evaluation: conditional acceptance, τ per benchmark, reliability, threshold sweep.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`, rendered by Agg on save),
never through pyplot, so nothing touches a global backend or figure registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from specserve.eval.acceptance import AcceptanceStats
from specserve.eval.calibration import CalibrationReport
from specserve.eval.threshold_sweep import ThresholdSweep

Results = Mapping[str, Mapping[str, AcceptanceStats]]  # drafter -> benchmark -> stats


def benchmark_names(results: Results) -> list[str]:
    """Every benchmark of any drafter, in first-seen order."""
    names: dict[str, None] = {}
    for per_benchmark in results.values():
        names.update(dict.fromkeys(per_benchmark))
    return list(names)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


def plot_conditional_acceptance(results: Results, path: str | Path) -> Path:
    """One panel per benchmark, one line per drafter: conditional acceptance vs draft position (Fig. 2)."""
    names = benchmark_names(results)
    rows, cols = _grid(len(names), 3)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    for i, bench in enumerate(names, start=1):
        ax = fig.add_subplot(rows, cols, i)
        for drafter, per_benchmark in results.items():
            if bench not in per_benchmark:
                continue
            rates = per_benchmark[bench].conditional_acceptance
            points = [(k, r) for k, r in enumerate(rates, start=1) if r is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=drafter)
        ax.set(title=bench, xlabel="draft position k", ylabel="P(accept k | accepted < k)", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a drafter-less baseline has no positions to plot
            ax.legend(fontsize="small")
    return _save(fig, path)


def plot_tau(results: Results, path: str | Path) -> Path:
    """Grouped bars: τ per benchmark (and their mean), one bar per drafter."""
    names = benchmark_names(results)
    groups = [*names, "mean"]
    width = 0.8 / max(len(results), 1)
    fig = Figure(figsize=(max(5.0, 2.5 + 0.6 * len(groups) * max(len(results), 1)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, (drafter, per_benchmark) in enumerate(results.items()):
        taus = [per_benchmark[b].tau if b in per_benchmark else math.nan for b in names]
        present = [t for t in taus if not math.isnan(t)]
        taus.append(sum(present) / len(present) if present else math.nan)
        xs = [g + (i - (len(results) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, taus, width=width, label=drafter)
        ax.bar_label(bars, fmt="%.2f", fontsize="x-small")
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel="accepted length τ", title="τ per benchmark")
    fig.legend(loc="outside right upper", fontsize="small")
    return _save(fig, path)


def plot_reliability(reports: Mapping[str, CalibrationReport], path: str | Path, title: str = "",
                     min_count: int = 20) -> Path:
    """Reliability diagrams of P_k, one panel per position, one line per variant (e.g. raw vs STS).

    Bins with fewer than `min_count` rounds are left out of the picture (their accuracy is mostly noise);
    the report's JSON keeps every bin.
    """
    width = max((len(r.positions) for r in reports.values()), default=0)
    rows, cols = _grid(width, 4)
    fig = Figure(figsize=(3.4 * cols, 3.2 * rows), layout="constrained")
    for k in range(1, width + 1):
        ax = fig.add_subplot(rows, cols, k)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        for variant, report in reports.items():
            if len(report.positions) < k:
                continue
            pos = report.positions[k - 1]
            rel = pos.reliability
            pts = [(c, a) for c, a, n in zip(rel.mean_confidence, rel.accuracy, rel.counts, strict=True)
                   if n >= max(min_count, 1)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=f"{variant} (ECE {pos.ece:.3f})")
        ax.set(title=f"k = {k}", xlabel="predicted P_k", ylabel="observed accept ≥ k", xlim=(0, 1), ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:  # every bin can be below min_count on a small run
            ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_threshold_sweep(sweep: ThresholdSweep, path: str | Path, title: str = "") -> Path:
    """Fig. 5: verified tokens per round split into accepted/rejected, and the acceptance rate, per threshold."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(sweep.points)))
    accepted = [p.accepted_per_round for p in sweep.points]
    rejected = [p.rejected_per_round for p in sweep.points]
    ax.bar(xs, accepted, label="accepted", color="tab:green")
    ax.bar(xs, rejected, bottom=accepted, label="rejected", color="tab:red")
    ax.set_xticks(xs, [f"{p.threshold:g}" for p in sweep.points], rotation=60, fontsize="small")
    ax.set(xlabel="cumulative-confidence threshold", ylabel="verified tokens per round")
    rate = ax.twinx()
    rate.plot(xs, [math.nan if p.acceptance_rate is None else p.acceptance_rate for p in sweep.points],
              color="black", marker="o", label="acceptance rate")
    rate.set(ylabel="acceptance rate", ylim=(0, 1.02))
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    ax.set_title(title or f"static threshold sweep ({sweep.rounds_used} rounds)")
    return _save(fig, path)
