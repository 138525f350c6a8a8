"""`specserve eval` and `specserve calibrate`: the evaluation protocol and STS calibration from the command line.

Wire them into `specserve/cli.py` with `add_eval_parser(sub)` and `add_calibrate_parser(sub)` in
`build_parser`; each sets `func` to its `cmd_*(args) -> int`, and errors a user can fix are
`SpecServeError`s (exit code 2, e.g. an empty or malformed benchmark file, named by file:line).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("specserve.eval")

_PROTOCOL = ("Protocol (DSpark paper, Table 1): the first user turn of every row of each {\"turns\": [...]} JSONL "
             "file, formatted with the target's chat template (generation prompt on, thinking off), sampled until "
             "one of the target's EOS ids or --max-new-tokens, with a fixed budget that verifies every drafted "
             "token. Every prompt has its own seed derived from (--seed, prompt index), so results do not depend "
             "on --batch-size.")


def _add_run_args(p, draft_help: str, many_drafts: bool) -> None:
    p.add_argument("--target", required=True, metavar="PATH",
                   help="target causal LM folder or hub id; its tokenizer must have a chat template")
    p.add_argument("--draft", required=True, action="append" if many_drafts else "store",
                   metavar="SPEC" if many_drafts else "PATH", help=draft_help)
    p.add_argument("--suite", required=True, action="append", metavar="FILE",
                   help="benchmark JSONL file, one {\"turns\": [...]} object per line (repeatable); the file stem "
                        "names the benchmark. An empty or malformed file is an error (exit 2, naming file:line)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="sampling temperature of target and draft (default 1.0, as the paper; 0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=2048, metavar="N",
                   help="generated tokens per prompt at most (default 2048, as the paper)")
    p.add_argument("--block-size", type=int, default=None, metavar="γ",
                   help="draft tokens proposed and verified per round, γ (default: each draft's own block size; "
                        "may not exceed it)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate only the first N prompts of every benchmark (default: all)")
    p.add_argument("--seed", type=int, default=0, help="base seed (>= 0) of the per-prompt seeds (default 0)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="requests decoded together (default 1, as the paper); changes speed, not results")
    p.add_argument("--dtype", default="float32", help="target and draft dtype: float32 (default) | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu (default) or cuda:0")


def add_eval_parser(subparsers) -> None:
    """Add `eval` to the top-level subparsers."""
    p = subparsers.add_parser(
        "eval", help="measure accepted length τ and per-position acceptance of drafts on benchmarks",
        description="Evaluate one or more drafts against a target on benchmark files and write results.md, "
                    "results.json and PNG plots (conditional acceptance per position, τ per benchmark, reliability "
                    "diagrams and the static-threshold sweep for drafts with a confidence head). " + _PROTOCOL)
    _add_run_args(p, "draft to evaluate, as NAME=SPEC or SPEC (repeatable; one side-by-side table): dspark:PATH | "
                     "dflash:PATH | eagle3:PATH | auto:PATH | model:PATH | ngram[:N] | none. A bare SPEC is named "
                     "kind:folder. A DSpark draft with calibration.json is reported raw and with its STS temperatures",
                  many_drafts=True)
    p.add_argument("--out", default="eval_results", metavar="DIR",
                   help="output folder for results.md, results.json and the PNGs (default ./eval_results)")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="a draft name: the τ table gains a column with each draft's mean τ relative to it")
    p.set_defaults(func=cmd_eval)


def add_calibrate_parser(subparsers) -> None:
    """Add `calibrate` to the top-level subparsers."""
    p = subparsers.add_parser(
        "calibrate", help="fit Sequential Temperature Scaling of a DSpark confidence head",
        description="Run the evaluation protocol with a DSpark draft, fit one temperature per draft position on "
                    "part of the prompts (Sequential Temperature Scaling: left to right, each minimising the ECE of "
                    "the cumulative confidence), report ECE and AUROC before and after on the held-out prompts, and "
                    "write calibration.json next to the draft's config.json; the drafter applies it when loaded. "
                    "Raw confidences are used even when the draft already has a calibration.json. " + _PROTOCOL)
    _add_run_args(p, "DSpark draft checkpoint folder (with a confidence head)", many_drafts=False)
    p.add_argument("--heldout-fraction", type=float, default=0.5, metavar="F",
                   help="share of the prompts (over all benchmarks, seeded by --seed) kept out of the fit to report "
                        "ECE/AUROC before and after, in [0, 1) (default 0.5; 0 = fit and report in-sample)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder to write calibration.json into (default: the draft folder)")
    p.add_argument("--report-dir", default=None, metavar="DIR",
                   help="also write a report here: results.md/json and PNGs with the acceptance and the STS "
                        "threshold sweep of all rounds, and the calibration and reliability diagrams of the held-out "
                        "rounds (default: none)")
    p.set_defaults(func=cmd_calibrate)


def _settings(args):
    from specserve.eval.runner import EvalSettings

    return EvalSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens, block_size=args.block_size,
                        limit=args.limit, seed=args.seed, batch_size=args.batch_size)


def _load(args):
    """Validate the settings and the suites before loading any weights, then load the target and tokenise."""
    from specserve.eval.benchmarks import load_benchmark
    from specserve.eval.runner import load_prompt_sets
    from specserve.target.model import CausalLM

    settings = _settings(args)
    for path in args.suite:  # a malformed file fails in milliseconds, not after the model loads
        load_benchmark(path, settings.limit)
    t0 = time.perf_counter()
    target = CausalLM.from_pretrained(args.target, dtype=args.dtype, device=args.device)
    log.info("loaded target %s (%d layers, vocab %d) in %.1fs", args.target, target.num_layers, target.vocab_size,
             time.perf_counter() - t0)
    return settings, target, load_prompt_sets(target, args.suite, settings.limit)


def _run_settings(args, settings) -> dict:
    return {"target": str(args.target), "suites": [str(s) for s in args.suite], "temperature": settings.temperature,
            "max_new_tokens": settings.max_new_tokens, "block_size": settings.block_size, "limit": settings.limit,
            "seed": settings.seed, "batch_size": settings.batch_size, "dtype": args.dtype}


def cmd_eval(args) -> int:
    """`specserve eval`: run every draft over every suite, write the report, print the τ and acceptance tables."""
    from specserve.errors import InvalidRequestError
    from specserve.eval.report import acceptance_table, tau_table, write_report
    from specserve.eval.runner import build_report, evaluate, parse_drafts

    drafts = parse_drafts(args.draft)
    if args.baseline is not None and args.baseline not in [d.name for d in drafts]:
        raise InvalidRequestError("baseline", f"{args.baseline!r} is not one of the drafts {[d.name for d in drafts]}")
    settings, target, prompt_sets = _load(args)
    runs = evaluate(target, drafts, prompt_sets, settings)
    report = build_report(runs, _run_settings(args, settings))
    paths = write_report(report, args.out, baseline=args.baseline)
    print(tau_table(report.acceptance, args.baseline))
    print()
    print(acceptance_table(report.acceptance))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_calibrate(args) -> int:
    """`specserve calibrate`: record raw rounds, fit STS, report held-out ECE/AUROC, write calibration.json."""
    from specserve.drafters.dspark_drafter import DSparkDrafter
    from specserve.drafters.factory import load_tap_drafter
    from specserve.errors import InvalidRequestError
    from specserve.eval.report import calibration_table, write_report
    from specserve.eval.runner import build_report, calibrate_run, run_drafter
    from specserve.eval.sts import save_calibration

    if not 0.0 <= args.heldout_fraction < 1.0:
        raise InvalidRequestError("heldout-fraction", f"must be in [0, 1), got {args.heldout_fraction}")
    if args.out is None and not Path(args.draft).is_dir():
        raise InvalidRequestError("out", f"{args.draft} is not a local folder to write calibration.json into; "
                                         "pass --out DIR")
    out = Path(args.out if args.out is not None else args.draft)
    settings, target, prompt_sets = _load(args)
    drafter = load_tap_drafter(args.draft, target)
    if not isinstance(drafter, DSparkDrafter) or drafter.model.confidence_head is None:
        raise InvalidRequestError("draft", f"{args.draft} has no confidence head (a DFlash or Eagle3 draft); STS "
                                           "calibrates DSpark confidence heads")
    name = Path(args.draft).name
    run = run_drafter(target, drafter, name, args.draft, prompt_sets, settings)
    provenance = {**_run_settings(args, settings), "benchmarks": [ps.name for ps in prompt_sets]}
    result = calibrate_run(run, args.heldout_fraction, settings.seed, fitted_on=provenance)
    out.mkdir(parents=True, exist_ok=True)
    path = save_calibration(out, result.calibration)
    held_out = {"raw": result.before, "sts": result.after}
    print(f"temperatures: {' '.join(f'{t:.3g}' for t in result.calibration.temperatures)}")
    print(f"fitted on {result.fit_rounds} rounds; held-out metrics on {result.heldout_rounds} rounds:\n")
    print(calibration_table({name: held_out}))
    if args.report_dir is not None:
        run.temperatures = result.calibration.temperatures  # the sweep replays the new temperatures
        report = build_report([run], {**provenance, "heldout_fraction": args.heldout_fraction})
        report.calibration[name] = held_out
        write_report(report, args.report_dir)
    print(f"\nwrote {path}")
    return 0
