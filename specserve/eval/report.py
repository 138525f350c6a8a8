"""The evaluation report: side-by-side markdown tables, one JSON file and the PNG plots.

`EvalReport` gathers what one run measured (several drafters × several benchmarks, their calibration
and threshold sweeps, the run's settings); `write_report` renders all of it into a folder, so the
`specserve eval` command only has to fill the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from specserve.eval.acceptance import AcceptanceStats
from specserve.eval.calibration import CalibrationReport
from specserve.eval.plots import (
    Results,
    benchmark_names,
    plot_conditional_acceptance,
    plot_reliability,
    plot_tau,
    plot_threshold_sweep,
)
from specserve.eval.threshold_sweep import ThresholdSweep

REPORT_FORMAT = "specserve-eval-v1"


@dataclass
class EvalReport:
    """Everything one evaluation run measured, keyed by drafter name (insertion order = table order)."""

    acceptance: dict[str, dict[str, AcceptanceStats]]  # drafter -> benchmark -> stats
    calibration: dict[str, dict[str, CalibrationReport]] = field(default_factory=dict)  # drafter -> variant -> ..
    sweeps: dict[str, ThresholdSweep] = field(default_factory=dict)  # drafter -> static-threshold sweep
    settings: dict = field(default_factory=dict)  # target, drafts, temperature, limit, seed, block size ...

    def to_dict(self) -> dict:
        """The JSON file's content."""
        return {
            "format": REPORT_FORMAT,
            "settings": self.settings,
            "tau": {d: {**{b: s.tau for b, s in per.items()}, "mean": mean_tau(per)}
                    for d, per in self.acceptance.items()},
            "acceptance": {d: {b: s.to_dict() for b, s in per.items()} for d, per in self.acceptance.items()},
            "calibration": {d: {v: r.to_dict() for v, r in per.items()} for d, per in self.calibration.items()},
            "threshold_sweeps": {d: s.to_dict() for d, s in self.sweeps.items()},
        }


def mean_tau(per_benchmark: Mapping[str, AcceptanceStats]) -> float:
    """Unweighted mean of the per-benchmark τ (the paper's "mean" column)."""
    return sum(s.tau for s in per_benchmark.values()) / len(per_benchmark)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tau_table(results: Results, baseline: str | None = None) -> str:
    """τ per benchmark and their mean, one row per drafter; with `baseline`, the mean's change relative to it."""
    names = benchmark_names(results)
    header = ["drafter", *names, "mean"] + ([f"vs {baseline}"] if baseline else [])
    base = mean_tau(results[baseline]) if baseline else None
    rows = []
    for drafter, per in results.items():
        row = [drafter, *(_fmt(per[b].tau) if b in per else "–" for b in names), _fmt(mean_tau(per))]
        if base:
            row.append(f"{100 * (mean_tau(per) / base - 1):+.1f} %")
        rows.append(row)
    return _table(header, rows)


def acceptance_table(results: Results) -> str:
    """Per drafter and benchmark: rounds, τ, token counts, rates and the conditional acceptance per position."""
    header = ["drafter", "benchmark", "rounds", "τ", "proposed", "verified", "verify rate", "accept rate",
              "stop rounds", "conditional acceptance k = 1, 2, …"]
    rows = [[drafter, bench, str(s.rounds), _fmt(s.tau), str(s.drafted), str(s.verified), _fmt(s.verify_rate),
             _fmt(s.acceptance_rate), str(s.stop_rounds), " ".join(_fmt(c) for c in s.conditional_acceptance)]
            for drafter, per in results.items() for bench, s in per.items()]
    return _table(header, rows)


def calibration_table(calibration: Mapping[str, Mapping[str, CalibrationReport]]) -> str:
    """Per drafter and variant (raw / STS): ECE (%), AUROC and Brier of P_k at each position."""
    header = ["drafter", "variant", "metric", "k = 1, 2, …"]
    rows = []
    for drafter, variants in calibration.items():
        for variant, report in variants.items():
            ps = report.positions
            rows.append([drafter, variant, "ECE %", " ".join(f"{100 * p.ece:.1f}" for p in ps)])
            rows.append([drafter, variant, "AUROC", " ".join(_fmt(p.auroc, 3) for p in ps)])
            rows.append([drafter, variant, "AUROC of c_k, given 1..k−1 accepted",
                         " ".join(_fmt(p.auroc_conditional, 3) for p in ps)])
            rows.append([drafter, variant, "Brier", " ".join(_fmt(p.brier, 3) for p in ps)])
    return _table(header, rows)


def sweep_table(sweep: ThresholdSweep) -> str:
    """One row per threshold: verified / accepted / rejected tokens per round, acceptance rate, τ."""
    header = ["threshold", "verified / round", "accepted / round", "rejected / round", "acceptance rate", "τ"]
    rows = [[f"{p.threshold:g}", _fmt(p.verified_per_round), _fmt(p.accepted_per_round),
             _fmt(p.rejected_per_round), _fmt(p.acceptance_rate, 3), _fmt(p.tau)] for p in sweep.points]
    return _table(header, rows)


def to_markdown(report: EvalReport, baseline: str | None = None) -> str:
    """The whole report as markdown: τ table first, then details, calibration and sweeps when present."""
    parts = ["## Accepted length τ", tau_table(report.acceptance, baseline),
             "## Acceptance details", acceptance_table(report.acceptance)]
    if report.calibration:
        parts += ["## Confidence calibration (P_k vs accepted ≥ k)", calibration_table(report.calibration)]
    for drafter, sweep in report.sweeps.items():
        parts += [f"## Static threshold sweep: {drafter} ({sweep.rounds_used} rounds, {sweep.rounds_skipped} skipped)",
                  sweep_table(sweep)]
    return "\n\n".join(parts) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "drafter"


def write_report(report: EvalReport, out_dir: str | Path, baseline: str | None = None) -> dict[str, Path]:
    """Write results.md, results.json and every plot the report has data for into `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "json": out / "results.json"}
    paths["markdown"].write_text(to_markdown(report, baseline))
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    paths["conditional_acceptance"] = plot_conditional_acceptance(report.acceptance, out / "conditional_acceptance.png")
    paths["tau"] = plot_tau(report.acceptance, out / "tau.png")
    for drafter, variants in report.calibration.items():
        if any(r.positions for r in variants.values()):
            paths[f"reliability/{drafter}"] = plot_reliability(variants, out / f"reliability_{_slug(drafter)}.png",
                                                               title=drafter)
    for drafter, sweep in report.sweeps.items():
        paths[f"threshold_sweep/{drafter}"] = plot_threshold_sweep(
            sweep, out / f"threshold_sweep_{_slug(drafter)}.png", title=f"{drafter}: static threshold sweep")
    return paths
