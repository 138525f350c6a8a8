"""The evaluation protocol through the engine: batch-size independence, per-prompt seeds, draft naming,
held-out splits and the report built from the recorded rounds (reference tiny target and drafts)."""

import math
from dataclasses import replace

import pytest

from specserve.engine.request import RoundRecord
from specserve.errors import InvalidRequestError
from specserve.eval.runner import (
    DraftRun,
    DraftSpec,
    EvalError,
    EvalSettings,
    build_report,
    calibrate_run,
    evaluate,
    load_prompt_sets,
    parse_drafts,
    prompt_seed,
    split_prompts,
)
from specserve.target.model import CausalLM


@pytest.fixture(scope="module")
def target(eval_target_dir):
    return CausalLM.from_pretrained(str(eval_target_dir))


@pytest.fixture(scope="module")
def prompt_sets(target, tiny_suite):
    return load_prompt_sets(target, tiny_suite, limit=None)


def counts(run: DraftRun):
    """Every round's counters, per benchmark and prompt (confidences compared separately, to float noise)."""
    return {b: [[(r.drafted, r.verified, r.accepted, r.committed) for r in p] for p in prompts]
            for b, prompts in run.rounds.items()}


def confidences(run: DraftRun):
    return [c for r in run.pooled() for c in (r.confidence or ())]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batch_size_does_not_change_the_rounds_or_tau(target, prompt_sets, reference_drafts, temperature):
    drafts = [DraftSpec("dspark", f"dspark:{reference_drafts['dspark']}"), DraftSpec("ngram", "ngram:4")]
    settings = EvalSettings(temperature=temperature, max_new_tokens=16, seed=3, batch_size=1)
    alone = evaluate(target, drafts, prompt_sets, settings)
    batched = evaluate(target, drafts, prompt_sets, replace(settings, batch_size=8))
    for a, b in zip(alone, batched):
        assert len(a.rounds["math"]) == len(b.rounds["math"]) == 10
        assert counts(a) == counts(b)
        assert confidences(a) == pytest.approx(confidences(b), abs=1e-5)  # batched matmuls: float noise only
    tau_a = build_report(alone, {}).to_dict()["tau"]
    tau_b = build_report(batched, {}).to_dict()["tau"]
    assert tau_a == tau_b
    # drafts were accepted, so the comparison is not vacuous (the reference target is near-uniform: at
    # temperature 1 its samples are hard to guess by prompt lookup, at 0 its argmax is hard for the draft)
    assert tau_a["dspark" if temperature > 0 else "ngram"]["mean"] > 1.5


def test_the_seed_changes_sampled_results_and_nothing_else_does(target, prompt_sets, reference_drafts):
    drafts = [DraftSpec("dspark", f"dspark:{reference_drafts['dspark']}")]
    settings = EvalSettings(temperature=1.0, max_new_tokens=12, seed=0, batch_size=4)
    first, again = (evaluate(target, drafts, prompt_sets[:1], settings)[0] for _ in range(2))
    other = evaluate(target, drafts, prompt_sets[:1], replace(settings, seed=1))[0]
    assert counts(first) == counts(again)
    assert counts(first) != counts(other)


def test_a_benchmark_without_rounds_is_an_error(target, prompt_sets):
    runs = evaluate(target, [DraftSpec("ngram", "ngram")], prompt_sets[:1], EvalSettings(max_new_tokens=1))
    with pytest.raises(EvalError, match="ngram on math: no verification rounds"):
        build_report(runs, {})


def test_prompt_seeds_are_stable_distinct_and_63_bit():
    seeds = {prompt_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= x < 2**63 for x in seeds)
    assert prompt_seed(7, 5) == prompt_seed(7, 5)


@pytest.mark.parametrize("field,value", [("block_size", 0), ("batch_size", 0), ("limit", 0), ("seed", -1),
                                         ("temperature", -1.0), ("max_new_tokens", 0)])
def test_settings_out_of_range_are_refused(field, value):
    with pytest.raises(InvalidRequestError, match=field.split("_")[0]):
        EvalSettings(**{field: value})


def test_draft_names():
    drafts = parse_drafts(["dspark:models/demo/dspark", "DFlash=dflash:x/y", "eagle3:a/ckpt", "eagle3:b/ckpt",
                           "ngram"])
    assert [d.name for d in drafts] == ["dspark:dspark", "DFlash", "eagle3:a/ckpt", "eagle3:b/ckpt", "ngram"]
    assert drafts[1].spec == "dflash:x/y"
    with pytest.raises(InvalidRequestError, match="unique"):
        parse_drafts(["A=ngram", "A=ngram:3"])


def test_a_block_larger_than_the_draft_is_refused(target, prompt_sets, reference_drafts):
    with pytest.raises(InvalidRequestError, match="block-size: .* at most 4 tokens per round, got 7"):
        evaluate(target, [DraftSpec("d", f"dspark:{reference_drafts['dspark']}")], prompt_sets,
                 EvalSettings(block_size=7))


def test_a_prompt_longer_than_the_context_is_refused_with_its_file(target, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text('{"turns": ["short"]}\n{"turns": ["' + "hello world " * 400 + '"]}\n')
    with pytest.raises(InvalidRequestError, match=r"long.jsonl: prompt 2 has \d+ tokens"):
        load_prompt_sets(target, [path], limit=None)


def run_of(prompts):
    """A DraftRun holding hand-made per-prompt rounds under one benchmark."""
    return DraftRun(name="d", spec="d", block_size=4, temperatures=None, rounds={"b": prompts})


def test_split_is_by_prompt_seeded_and_keeps_both_sides_non_empty():
    prompts = [[RoundRecord(i + 1, i + 1, 0, 1)] * (i + 1) for i in range(10)]  # prompt i: i + 1 rounds, drafted i + 1
    fit, held = split_prompts(run_of(prompts), 0.3, seed=0)
    held_ids, fit_ids = {r.drafted for r in held}, {r.drafted for r in fit}
    assert len(held_ids) == 3 and held_ids.isdisjoint(fit_ids) and len(fit_ids) == 7
    assert len(held) == sum(held_ids)  # every round of a held-out prompt, none of the others
    assert split_prompts(run_of(prompts), 0.3, seed=0) == (fit, held)
    assert split_prompts(run_of(prompts), 0.3, seed=1) != (fit, held)
    fit, held = split_prompts(run_of(prompts[:2]), 0.01)
    assert fit and held
    every, same = split_prompts(run_of(prompts), 0.0)
    assert every is same and len(every) == 55
    with pytest.raises(InvalidRequestError, match="heldout-fraction"):
        split_prompts(run_of(prompts), 1.0)
    with pytest.raises(InvalidRequestError, match="at least 2 prompts"):
        split_prompts(run_of(prompts[:1]), 0.5)


def test_report_has_raw_and_sts_calibration_and_a_sweep_only_for_drafts_with_confidences(make_rounds):
    rounds = make_rounds(400, gamma=4, overconfidence=3.0)
    dspark = DraftRun("dspark", "dspark:x", 4, temperatures=(3.0,) * 4, rounds={"b": [rounds[:200], rounds[200:]]})
    plain = [replace(r, confidence=None) for r in rounds[:50]]
    eagle = DraftRun("eagle3", "eagle3:y", 4, temperatures=None, rounds={"b": [plain]})
    report = build_report([dspark, eagle], {"seed": 1})
    assert set(report.calibration) == {"dspark"} and set(report.sweeps) == {"dspark"}
    raw, sts = report.calibration["dspark"]["raw"], report.calibration["dspark"]["sts"]
    assert sts.ece[0] < raw.ece[0]
    assert report.settings["seed"] == 1 and report.settings["drafts"]["dspark"]["sts_temperatures"] == (3.0,) * 4
    assert report.acceptance["eagle3"]["b"].rounds == 50


def test_calibrate_run_fits_on_some_prompts_and_reports_on_the_others(make_rounds):
    rounds = make_rounds(2000, gamma=4, overconfidence=2.5, seed=1)
    run = DraftRun("d", "d", 4, None, rounds={"b": [rounds[i:i + 100] for i in range(0, 2000, 100)]})
    result = calibrate_run(run, heldout_fraction=0.25, seed=0, fitted_on={"target": "t"})
    assert result.heldout_rounds == 500 and result.fit_rounds == 1500
    assert all(math.isclose(t, 2.5, rel_tol=0.35) for t in result.calibration.temperatures)
    assert sum(result.after.ece) < sum(result.before.ece)
    held = result.calibration.fitted_on["heldout"]
    assert result.calibration.fitted_on["target"] == "t" and held["ece_after"] == result.after.ece
    assert held["auroc_before"][0] == pytest.approx(held["auroc_after"][0])  # slot 1: a monotone map
