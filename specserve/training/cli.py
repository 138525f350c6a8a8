"""`specserve train --config FILE [--set key=value ...]`: train a DSpark, DFlash or Eagle3 draft.

Wire it into `specserve/cli.py` with `add_train_parser(sub)` in `build_parser`. Multi-process runs go
through torchrun, which can start this module directly:

    torchrun --nproc_per_node 8 -m specserve.training.cli --config draft.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import logging
import re
import sys
import typing

log = logging.getLogger("specserve.training")


def describe_keys() -> str:
    """Every config key with its default and the comment it is declared with in `training/config.py`."""
    from specserve.training import config as config_module

    lines = []
    for section in dataclasses.fields(config_module.TrainConfig):
        cls = typing.get_type_hints(config_module.TrainConfig)[section.name]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"{section.name}: {doc}")
        comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), flags=re.M))
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            note = f"  {comments[f.name]}" if f.name in comments else ""
            lines.append(f"  {section.name}.{f.name} = {default!r}{note}")
    return "\n".join(lines)


def add_train_parser(subparsers) -> None:
    """Add `train` to the top-level subparsers."""
    p = subparsers.add_parser(
        "train", help="train a DSpark, DFlash or Eagle3 draft for a target",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a draft model against a frozen target (algorithms.md section 5). Settings come from a "
                    "YAML/JSON file and --set overrides; every key is checked (an unknown key is an error that "
                    "lists the closest valid ones). Checkpoints go to checkpoint.dir/step_N/ with a `latest` "
                    "pointer; rerunning the same command resumes exactly where the last checkpoint left off. The "
                    "trained draft is exported to checkpoint.dir/final/ (load it with --drafter auto:PATH). "
                    "Multi-process: torchrun --nproc_per_node N -m specserve.training.cli --config FILE.",
        epilog="config keys (section.key = default  meaning):\n" + describe_keys())
    p.add_argument("--config", default=None,
                   help="YAML (.yaml/.yml) or JSON (.json) file with the sections below; Python files are refused "
                        "(configs are data, never executed). Optional when --set gives every required key "
                        "(model.target, data.train_file or data.cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set optim.lr=3e-4 --set model.target_layer_ids=[1,4,7]; the "
                        "value is parsed as YAML (numbers, true/false, null, [lists]); repeatable")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file + overrides + defaults) as YAML and exit")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    """`specserve train`: resolve the config, join torchrun's process group if any, train, export."""
    import yaml

    from specserve.data.atomic import atomic_write_bytes
    from specserve.training.config import load_config
    from specserve.training.distributed import init_distributed, shutdown
    from specserve.training.trainer import Trainer

    cfg = load_config(args.config, args.set)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    ctx = init_distributed(cfg.train.device)
    trainer = None
    try:
        trainer = Trainer(cfg, ctx)
        if ctx.is_main:
            trainer.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(trainer.root / "train_config.yaml", yaml.safe_dump(cfg.to_dict()).encode())
            log.info("training %s: %d steps (%d per epoch), accumulation %d, %d process(es), parallel %s",
                     cfg.model.algorithm, trainer.total_steps, trainer.steps_per_epoch, trainer.accumulation,
                     ctx.world_size, trainer.mode)
        result = trainer.train()
        if ctx.is_main:
            tau = result.metrics.get("train/tau_probabilistic")
            print(f"{result.export}: {result.steps} steps, loss {result.metrics.get('train/loss', float('nan')):.4f}"
                  + (f", tau_probabilistic {tau:.3f}" if tau is not None else "")
                  + f", {result.tokens_per_s:.0f} tokens/s")
            for name, value in result.eval_metrics.items():
                print(f"  {name} = {value:.4f}")
    finally:
        # the DDP/FSDP wrapper holds the process group: release it while the group still exists, or its
        # destructor runs after destroy_process_group (when this frame unwinds) and can hang the process
        del trainer
        gc.collect()
        shutdown(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m specserve.training.cli` (what torchrun launches)."""
    import os

    from specserve.errors import SpecServeError
    from specserve.procs import ENV, die_with_parent

    if os.environ.get(ENV) == "1":  # a rank of a torchrun the trainer service supervises: die with torchrun
        die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="specserve")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except SpecServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
