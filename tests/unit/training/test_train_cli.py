"""`specserve train`: help, config resolution and errors a user can fix (exit code 2)."""

from __future__ import annotations

import argparse

import yaml

from specserve.training.cli import add_train_parser, main


def test_help_explains_every_config_key(capsys):
    parser = argparse.ArgumentParser(prog="specserve")
    add_train_parser(parser.add_subparsers())  # how specserve/cli.py wires it
    args = parser.parse_args(["train", "--config", "x.yaml", "--set", "a.b=1", "--set", "c.d=2"])
    assert (args.config, args.set, args.func.__name__) == ("x.yaml", ["a.b=1", "c.d=2"], "cmd_train")
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for key in ("--config", "--set", "--print-config", "optim.lr = 0.0006", "model.algorithm = 'dspark'",
                "checkpoint.every_steps = 3000", "train.parallel"):
        assert key in out, key


def test_print_config_resolves_file_and_overrides(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  target: /t\ndata:\n  train_file: /d.jsonl\n")
    assert main(["--config", str(path), "--set", "optim.lr=1e-4", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 1e-4 and cfg["model"]["target"] == "/t" and cfg["train"]["global_batch_size"] == 512


def test_unknown_key_exits_2_naming_it(tmp_path, capsys):
    assert main(["--set", "model.target=/t", "--set", "data.train_file=/d", "--set", "train.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "train.max_stepz: unknown config key; did you mean train.max_steps" in err
