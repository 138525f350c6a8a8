"""Side-by-side markdown tables, the JSON file and the report folder."""

import json

import pytest

from specserve.engine.request import RoundRecord
from specserve.eval.acceptance import acceptance_stats
from specserve.eval.calibration import calibration_report
from specserve.eval.report import REPORT_FORMAT, EvalReport, mean_tau, tau_table, to_markdown, write_report
from specserve.eval.threshold_sweep import threshold_sweep


def stats_with_tau(*committed):
    return acceptance_stats([RoundRecord(drafted=4, verified=4, accepted=c - 1, committed=c) for c in committed])


RESULTS = {
    "dspark": {"gsm8k": stats_with_tau(5, 5, 2), "humaneval": stats_with_tau(4), "mt-bench": stats_with_tau(3)},
    "eagle3": {"gsm8k": stats_with_tau(3), "mt-bench": stats_with_tau(2)},
}


def table_rows(markdown):
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()]


def test_tau_table_side_by_side_with_mean_and_missing_cells():
    rows = table_rows(tau_table(RESULTS))
    assert rows[0] == ["drafter", "gsm8k", "humaneval", "mt-bench", "mean"]
    assert rows[2] == ["dspark", "4.00", "4.00", "3.00", "3.67"]
    assert rows[3] == ["eagle3", "3.00", "–", "2.00", "2.50"]


def test_tau_table_relative_to_a_baseline():
    rows = table_rows(tau_table(RESULTS, baseline="eagle3"))
    assert rows[0][-1] == "vs eagle3"
    assert rows[2][-1] == "+46.7 %" and rows[3][-1] == "+0.0 %"


def test_mean_tau_is_the_unweighted_mean_over_benchmarks():
    assert mean_tau(RESULTS["dspark"]) == pytest.approx((4 + 4 + 3) / 3)


@pytest.fixture
def report(make_rounds):
    rounds = make_rounds(800, gamma=3, overconfidence=2.0, seed=1)
    return EvalReport(acceptance={"dspark": {"gsm8k": acceptance_stats(rounds)}, **{"eagle3": RESULTS["eagle3"]}},
                      calibration={"dspark": {"raw": calibration_report(rounds),
                                              "sts": calibration_report(rounds, [2.0, 2.0, 2.0])}},
                      sweeps={"dspark": threshold_sweep(rounds)},
                      settings={"temperature": 1.0, "limit": 10})


def test_markdown_has_every_section(report):
    md = to_markdown(report)
    for heading in ("Accepted length τ", "Acceptance details", "Confidence calibration", "Static threshold sweep"):
        assert f"## {heading}" in md
    assert "| dspark | raw | ECE % |" in md


def test_write_report_writes_markdown_json_and_plots(tmp_path, report):
    paths = write_report(report, tmp_path / "out", baseline="eagle3")
    assert set(paths) == {"markdown", "json", "conditional_acceptance", "tau", "reliability/dspark",
                          "threshold_sweep/dspark"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    data = json.loads(paths["json"].read_text())
    assert data["format"] == REPORT_FORMAT and data["settings"]["limit"] == 10
    assert data["tau"]["eagle3"] == {"gsm8k": 3.0, "mt-bench": 2.0, "mean": 2.5}
    assert len(data["acceptance"]["dspark"]["gsm8k"]["conditional_acceptance"]) == 3
    assert [p["position"] for p in data["calibration"]["dspark"]["sts"]["positions"]] == [1, 2, 3]
    assert data["threshold_sweeps"]["dspark"]["rounds_used"] == 800
    assert "vs eagle3" in paths["markdown"].read_text()


def test_report_without_calibration_writes_only_acceptance(tmp_path):
    paths = write_report(EvalReport(acceptance=RESULTS), tmp_path)
    assert set(paths) == {"markdown", "json", "conditional_acceptance", "tau"}
    assert "Confidence calibration" not in paths["markdown"].read_text()
