"""`specserve generate`: the real loading path, JSON output, and exit code 2 with a message on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specserve.cli import main


def generate(capsys, target, *extra):
    code = main(["generate", "--target", str(target), "--prompt", "def add(a, b):", "--max-tokens", "12",
                 "--json", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("drafter", ["none", "ngram", "ngram:3"])
def test_generate_json_is_identical_across_drafters(capsys, tiny_target_dir, drafter):
    code, out, _ = generate(capsys, tiny_target_dir, "--drafter", drafter, "--ignore-eos")
    assert code == 0
    result = json.loads(out)
    assert len(result["token_ids"]) == 12 and result["stats"]["finish_reason"] == "length"
    code, baseline, _ = generate(capsys, tiny_target_dir, "--drafter", "none", "--ignore-eos")
    assert json.loads(baseline)["token_ids"] == result["token_ids"]


def test_generate_with_model_drafter_and_sampling_is_reproducible(capsys, tiny_target_dir):
    args = ("--drafter", f"model:{tiny_target_dir}", "--temperature", "1.0", "--seed", "5", "--ignore-eos")
    first = json.loads(generate(capsys, tiny_target_dir, *args)[1])
    second = json.loads(generate(capsys, tiny_target_dir, *args)[1])
    assert first["token_ids"] == second["token_ids"]
    assert first["stats"]["tau"] > 1.0  # the draft is the target itself: most drafts are accepted


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--max-tokens", "0"], "max_tokens"),
    (["--drafter", "magic"], "unknown drafter 'magic'"),
])
def test_bad_input_exits_2_naming_the_value(capsys, tiny_target_dir, flags, message):
    code, _, err = generate(capsys, tiny_target_dir, *flags)
    assert code == 2
    assert message in err


def test_unknown_target_path_exits_2(capsys, tmp_path):
    code, _, err = generate(capsys, tmp_path / "missing-model")
    assert code == 2 and "missing-model" in err


def test_help_via_the_installed_entry_point():
    out = subprocess.run([sys.executable, "-m", "specserve.cli", "generate", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for option in ("--drafter", "--temperature", "--top-p", "--top-k", "--seed", "--max-tokens", "--chat"):
        assert option in out


REFERENCE = Path(__file__).parents[1] / "fixtures" / "deepspec_tiny"


def test_drafter_check_accepts_a_fitting_draft_and_names_mismatches(capsys, tiny_target_dir):
    draft = REFERENCE / "dspark_rnn" / "checkpoint"
    assert main(["drafter", "check", "--draft", str(draft), "--target", str(REFERENCE / "tiny_qwen3_target")]) == 0
    assert "Qwen3DSparkModel" in capsys.readouterr().out
    assert main(["drafter", "check", "--draft", str(draft), "--target", str(tiny_target_dir)]) == 2
    err = capsys.readouterr().err
    assert "vocab_size" in err and "target_layer_ids" in err


@pytest.mark.parametrize("spec", ["auto:{}/dspark_rnn/checkpoint", "dflash:{}/dflash/checkpoint",
                                  "eagle3:{}/eagle3/checkpoint"])
def test_generate_with_deepspec_drafts_equals_plain_greedy(capsys, spec):
    target = str(REFERENCE / "tiny_qwen3_target")
    args = ["generate", "--target", target, "--prompt-ids", "1,2,3,4,5,6,7,8", "--max-tokens", "16", "--json",
            "--ignore-eos"]
    assert main([*args, "--drafter", spec.format(REFERENCE)]) == 0
    speculative = json.loads(capsys.readouterr().out)
    assert main([*args, "--drafter", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == speculative["token_ids"]
    assert speculative["stats"]["drafted"] > 0
