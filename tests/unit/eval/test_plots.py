"""Every plot is written as a non-empty PNG, including with missing benchmarks and empty calibration."""

import pytest

from specserve.engine.request import RoundRecord
from specserve.eval.acceptance import acceptance_stats
from specserve.eval.calibration import calibration_report
from specserve.eval.plots import (
    benchmark_names,
    plot_conditional_acceptance,
    plot_reliability,
    plot_tau,
    plot_threshold_sweep,
)
from specserve.eval.sts import fit_sts
from specserve.eval.threshold_sweep import threshold_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rounds(make_rounds):
    return make_rounds(1_500, gamma=4, overconfidence=2.0, seed=4)


@pytest.fixture(scope="module")
def results(rounds):
    plain = [RoundRecord(drafted=4, verified=4, accepted=a, committed=a + 1) for a in (0, 1, 4, 2)]
    return {"dspark": {"gsm8k": acceptance_stats(rounds[:700]), "mt-bench": acceptance_stats(rounds[700:])},
            "ngram": {"gsm8k": acceptance_stats(plain)}}  # ngram lacks mt-bench


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2_000


def test_benchmark_names_are_the_union_in_first_seen_order(results):
    assert benchmark_names(results) == ["gsm8k", "mt-bench"]


def test_acceptance_plots(tmp_path, results):
    assert_png(plot_conditional_acceptance(results, tmp_path / "cond.png"))
    assert_png(plot_tau(results, tmp_path / "sub" / "tau.png"))  # creates the folder


def test_reliability_and_sweep_plots(tmp_path, rounds):
    sts = fit_sts(rounds)
    variants = {"raw": calibration_report(rounds), "sts": calibration_report(rounds, sts.temperatures)}
    assert_png(plot_reliability(variants, tmp_path / "rel.png", title="dspark"))
    assert_png(plot_threshold_sweep(threshold_sweep(rounds), tmp_path / "sweep.png"))


def test_reliability_plot_without_positions_still_writes_a_file(tmp_path):
    empty = calibration_report([RoundRecord(drafted=1, verified=1, accepted=1, committed=2)])
    assert (plot_reliability({"raw": empty}, tmp_path / "rel.png")).stat().st_size > 0
