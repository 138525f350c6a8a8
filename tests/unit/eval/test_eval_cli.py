"""`specserve eval` and `specserve calibrate` end to end on the reference tiny target and drafts."""

import argparse
import json
import shutil
import sys

import pytest

from specserve.errors import SpecServeError
from specserve.eval.cli import add_calibrate_parser, add_eval_parser
from specserve.eval.sts import SIDECAR_NAME, load_calibration

RUN = ("--limit", "3", "--max-new-tokens", "12", "--batch-size", "4")


def build_parser():
    parser = argparse.ArgumentParser(prog="specserve")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    add_calibrate_parser(sub)
    return parser


def specserve(*argv) -> int:
    """Run a command as `specserve.cli.main` does: a SpecServeError is printed and exits 2."""
    args = build_parser().parse_args([str(a) for a in argv])
    try:
        return args.func(args)
    except SpecServeError as exc:
        print(f"specserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


def test_eval_writes_one_side_by_side_report_for_three_drafts(capsys, tmp_path, eval_target_dir, tiny_suite,
                                                               reference_drafts):
    drafts = [f"--draft={kind}:{path}" for kind, path in reference_drafts.items()]
    code = specserve("eval", "--target", eval_target_dir, *drafts, "--suite", tiny_suite[0], "--suite",
                     tiny_suite[1], *RUN, "--out", tmp_path, "--baseline", "eagle3:checkpoint")
    out = capsys.readouterr().out
    assert code == 0
    assert "| drafter | math | chat | mean | vs eagle3:checkpoint |" in out
    for name in ("dspark:checkpoint", "dflash:checkpoint", "eagle3:checkpoint"):
        assert f"| {name} |" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert list(result["tau"]) == ["dspark:checkpoint", "dflash:checkpoint", "eagle3:checkpoint"]
    assert all(set(per) == {"math", "chat", "mean"} for per in result["tau"].values())
    assert result["settings"]["temperature"] == 1.0 and result["settings"]["limit"] == 3
    assert result["settings"]["drafts"]["eagle3:checkpoint"]["block_size"] == 3
    assert list(result["calibration"]) == ["dspark:checkpoint"]  # the only draft with a confidence head
    for png in ("conditional_acceptance.png", "tau.png", "reliability_dspark_checkpoint.png",
                "threshold_sweep_dspark_checkpoint.png"):
        assert (tmp_path / png).stat().st_size > 0
    assert "## Accepted length τ" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("content,message", [
    ("", "empty.jsonl: no prompts"),
    ('{"turns": ["ok"]}\n{"turns": []}\n', "empty.jsonl:2: \"turns\" must be a non-empty list"),
    ('{"turns": ["ok"]}\nnot json\n', "empty.jsonl:2: not valid JSON"),
])
def test_an_empty_or_malformed_suite_exits_2_naming_the_file_and_line(capsys, tmp_path, eval_target_dir,
                                                                      reference_drafts, content, message):
    bad = tmp_path / "empty.jsonl"
    bad.write_text(content)
    for command in ("eval", "calibrate"):
        code = specserve(command, "--target", eval_target_dir, "--draft", reference_drafts["dspark"], "--suite", bad)
        assert code == 2 and message in capsys.readouterr().err


def test_a_target_without_a_chat_template_exits_2(capsys, tiny_suite, reference_drafts):
    target = reference_drafts["dspark"].parents[1] / "tiny_qwen3_target"  # no tokenizer at all
    assert specserve("eval", "--target", target, "--draft", "ngram", "--suite", tiny_suite[0]) == 2
    assert "chat template" in capsys.readouterr().err


def test_calibrate_writes_the_sidecar_and_refits_on_raw_confidences(capsys, tmp_path, eval_target_dir, tiny_suite,
                                                                     reference_drafts):
    draft = shutil.copytree(reference_drafts["dspark"], tmp_path / "draft")
    args = ("calibrate", "--target", eval_target_dir, "--draft", draft, "--suite", tiny_suite[0], "--suite",
            tiny_suite[1], "--limit", "6", "--max-new-tokens", "16", "--batch-size", "6", "--heldout-fraction", "0.25")
    assert specserve(*args, "--report-dir", tmp_path / "report") == 0
    out = capsys.readouterr().out
    assert "| draft | raw | ECE % |" in out and "| draft | sts | AUROC |" in out
    first = load_calibration(draft)
    assert len(first.temperatures) == 4 and any(abs(t - 1.0) > 0.05 for t in first.temperatures)
    held = first.fitted_on["heldout"]
    assert held["fraction"] == 0.25 and held["rounds"] > 0 and len(held["ece_before"]) == 4
    assert first.fitted_on["benchmarks"] == ["math", "chat"] and first.fitted_on["seed"] == 0
    assert (tmp_path / "report" / "reliability_draft.png").exists()
    # the draft now applies these temperatures, yet a second calibration sees raw confidences again
    assert specserve(*args) == 0
    assert load_calibration(draft).temperatures == first.temperatures
    assert specserve(*args, "--out", tmp_path / "elsewhere") == 0
    assert (tmp_path / "elsewhere" / SIDECAR_NAME).exists()


def test_calibrate_refuses_a_draft_without_confidence_head(capsys, tmp_path, eval_target_dir, tiny_suite,
                                                           reference_drafts):
    draft = shutil.copytree(reference_drafts["dflash"], tmp_path / "dflash")
    assert specserve("calibrate", "--target", eval_target_dir, "--draft", draft, "--suite", tiny_suite[0]) == 2
    assert "no confidence head" in capsys.readouterr().err
    assert not (draft / SIDECAR_NAME).exists()


def test_every_option_is_explained_in_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("eval", "calibrate"):
        parser = sub.choices[command]
        assert parser.description
        for action in parser._actions:
            assert action.help, f"{command} {action.option_strings} has no help"
