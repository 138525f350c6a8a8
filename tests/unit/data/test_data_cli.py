"""`specserve data regenerate | cache | estimate` through their argparse parsers."""

import argparse
import json
from pathlib import Path

import pytest

from specserve.data.cache_reader import FeatureCache
from specserve.data.cli import add_data_parser
from specserve.data.errors import ResumeMismatchError
from specserve.errors import InvalidRequestError

FIXTURES = Path(__file__).parents[2] / "fixtures" / "data"


def parser():
    p = argparse.ArgumentParser(prog="specserve")
    add_data_parser(p.add_subparsers(dest="command", required=True))
    return p


def run(*argv):
    args = parser().parse_args(["data", *map(str, argv)])
    return args.func(args)


def subcommands():
    data = parser()._subparsers._group_actions[0].choices["data"]
    return data._subparsers._group_actions[0].choices


@pytest.mark.parametrize("name", ["regenerate", "cache", "estimate"])
def test_help_explains_every_option(name):
    sub = subcommands()[name]
    assert sub.description
    for action in sub._actions:
        assert action.help, f"{name} {action.option_strings} has no help"


def test_estimate_prints_qwen3_4b_sizes(capsys):
    assert run("estimate", "--hidden-size", 2560, "--num-taps", 5, "--tokens", 1_240_000_000) == 0
    out = capsys.readouterr().out
    assert "30,726" in out and "38.1 TB" in out and "17,945" in out


def test_estimate_counts_a_data_set_from_the_target_config(capsys, tiny_target_dir):
    assert run("estimate", "--target", tiny_target_dir, "--data", FIXTURES / "chat.jsonl") == 0
    out = capsys.readouterr().out
    assert "H=64, m=3 tapped layers" in out


def test_regenerate_then_cache(capsys, tiny_target_dir, tmp_path):
    regen = tmp_path / "regen.jsonl"
    common = ("--target", tiny_target_dir, "--input", FIXTURES / "prompts.jsonl", "--out", regen,
              "--max-tokens", 8, "--limit", 3, "--drafter", "ngram")
    assert run("regenerate", *common) == 0
    assert len(regen.read_text().splitlines()) == 3
    assert run("regenerate", *common) == 0  # already complete: nothing to do
    assert "0 this run" in capsys.readouterr().out
    with pytest.raises(ResumeMismatchError, match="seed: was 0, now 1"):
        run("regenerate", *common, "--seed", 1)
    cache = tmp_path / "cache"
    assert run("cache", "--target", tiny_target_dir, "--data", regen, "--out", cache, "--layers", "0,2",
               "--taps-dtype", "fp8", "--final", "none") == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["target_layer_ids"] == [0, 2] and manifest["storage"] == {"taps": "fp8", "final": "none"}
    assert len(FeatureCache(cache)) == 3


def test_missing_input_names_the_option(tiny_target_dir, tmp_path):
    with pytest.raises(InvalidRequestError, match="^input: "):
        run("regenerate", "--target", tiny_target_dir, "--input", tmp_path / "nope.jsonl", "--out", tmp_path / "o")


@pytest.mark.parametrize("argv,option", [
    (("estimate", "--hidden-size", 0, "--tokens", 10), "hidden-size"),
    (("estimate", "--hidden-size", 64, "--tokens", -1), "tokens"),
    (("cache", "--target", "t", "--data", "d", "--out", "o", "--shard-mb", 0), "shard-mb"),
])
def test_bad_numbers_name_the_option(argv, option):
    with pytest.raises(InvalidRequestError, match=f"^{option}: "):
        run(*argv)
