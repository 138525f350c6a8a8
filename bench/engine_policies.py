"""Budget policies inside the engine: the prefix scheduler against every fixed k, with no HTTP and no client.

`serving_concurrency.py` measures the policies through the gateway, with its load generator on the same 2 cores
as the engine: a streamed event costs the client and the event loop CPU time, and a plain round streams one
token per request where a drafting round streams ~2. That benchmark cannot say whether a gap between the prefix
scheduler and fixed-k is the policy's choice or the cost of streaming it. This one drives `SpecEngine.step` in
one process, the way `specserve serve` builds it (the demo target, its DSpark draft, `build_policy`, the SPS
table `profile_for` measures at start-up, `--threads` torch threads), and measures what the engine alone does.

Closed loop: at concurrency N, N requests are always in flight; when one finishes, the next is added before
the next step (`--requests` per level, prompts from `--prompts` in order, request j seeded j). Policies: `none`
(no drafter), `fixedK` for every K in `--fixed` and for γ, and `prefix`; one engine per policy for the whole run (its
round costs learn across levels, as a gateway's do). Every concurrency level runs `--repeats` times, each repeat
one run per policy in a rotated order, so that the machine's drift (±10-15 % within minutes here) hits every
policy alike; ratios are taken per repeat between runs minutes apart and reported with their spread.

Metrics per (policy, level): aggregate tokens/s (tokens of all requests / wall time of the level), per-user
tokens/s (mean over requests of tokens / (finish - add)), the share of request-rounds that verified drafts,
draft tokens verified and tokens committed per such request-round. Targets checked (issue 6, here without the
transport): prefix aggregate within 5 % of the best fixed k at every level (pooled over repeats), prefix per-user
above no speculation's at every level. With `--temperature 0` every policy must produce the same tokens for the
same request (lossless): the texts are compared.

Writes --out (JSON: command, environment, per-repeat runs, pooled summaries, paired ratios, checks) and --plot
(PNG: per-user against aggregate tokens/s per policy; prefix / best fixed-k and prefix / none against
concurrency, bars spanning the per-repeat ratios).

  .venv/bin/python bench/engine_policies.py                                         # the committed run
  .venv/bin/python bench/engine_policies.py --temperature 0 --stop-at-eos \\
      --out bench/results/engine_policies_greedy.json --plot bench/results/engine_policies_greedy.png
  .venv/bin/python bench/engine_policies.py --concurrency 2 8 --fixed 2 --requests 4 --repeats 1 \\
      --max-tokens 16 --out /tmp/ep.json --plot /tmp/ep.png                      # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from environment import cpu_info, demo_parser  # bench/environment.py
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.gateway.embedded import profile_for  # noqa: E402
from services.gateway.policy import build_policy  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402
from specserve.decoding.sampling import SamplingParams  # noqa: E402
from specserve.drafters.registry import build_drafter  # noqa: E402
from specserve.engine.engine import SpecEngine  # noqa: E402
from specserve.engine.request import Request  # noqa: E402
from specserve.engine.verifier import LocalVerifier  # noqa: E402
from specserve.target.model import CausalLM  # noqa: E402

log = logging.getLogger("bench.engine_policies")


def parse_args(argv=None) -> argparse.Namespace:
    p = demo_parser(__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="requests in flight")
    p.add_argument("--fixed", type=int, nargs="+", default=[2, 3, 4],
                   help="k of the fixed-k policies; the draft's block size γ is always added")
    p.add_argument("--requests", type=int, default=24, help="requests per level (each policy, each repeat)...")
    p.add_argument("--min-rounds", type=int, default=2,
                   help="...raised at high concurrency to at least this many times the concurrency")
    p.add_argument("--repeats", type=int, default=3, help="runs of every (policy, level), interleaved")
    p.add_argument("--max-tokens", type=int, default=96, help="max_tokens of every request")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy, texts compared across policies")
    p.add_argument("--stop-at-eos", action="store_true", help="requests stop at EOS (default: they ignore it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (`specserve serve`'s default on 2 cores)")
    p.add_argument("--max-batch", type=int, default=32, help="engine max_batch")
    p.add_argument("--out", default="bench/results/engine_policies.json", help="JSON results")
    p.add_argument("--plot", default="bench/results/engine_policies.png", help="PNG plot")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.requests < 1 or min(args.concurrency) < 1 or min(args.fixed) < 1:
        p.error("--repeats, --requests, --concurrency and --fixed must be >= 1")
    if max(args.concurrency) > args.max_batch:
        p.error(f"--concurrency {max(args.concurrency)} exceeds --max-batch {args.max_batch}")
    return args


@dataclass
class Run:
    """One (policy, level, repeat): its requests, finished, and the wall time of the level."""

    wall_s: float
    requests: list[Request]

    def summary(self) -> dict:
        reqs = self.requests
        tokens = sum(len(r.output_ids) for r in reqs)
        rounds = [x for r in reqs for x in r.stats.rounds]
        drafting = [x for r in reqs for x in r.stats.rounds if x.verified > 0]
        per_user = [len(r.output_ids) / (r.stats.finished - r.stats.arrival) for r in reqs]
        return {"requests": len(reqs), "tokens": tokens, "wall_s": self.wall_s, "aggregate_tps": tokens / self.wall_s,
                "per_user_tps": statistics.fmean(per_user),
                "drafted_share": len(drafting) / len(rounds) if rounds else 0.0,
                "verified_per_drafting_round": statistics.fmean(x.verified for x in drafting) if drafting else 0.0,
                "committed_per_drafting_round": statistics.fmean(x.committed for x in drafting) if drafting else 0.0}


class Bench:
    """The target, drafter and verifier built once; one engine per policy, built as `specserve serve` builds it."""

    def __init__(self, args):
        self.args = args
        torch.set_num_threads(args.threads)
        self.target = CausalLM.from_pretrained(args.target, dtype="float32", device="cpu")
        self.drafter = build_drafter(args.drafter, self.target)
        taps = self.drafter.target_layer_ids
        sps, plain_sps = profile_for(self.target, self.drafter, self.drafter.max_block, args.max_batch)
        self.verifier = LocalVerifier(self.target, tap_layers=taps, sps=sps, plain_sps=plain_sps)
        tokenizer = self.target.tokenizer
        rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        self.prompts = [tokenizer.encode(row["turns"][0]) for row in rows]
        self.engines = {name: self._engine(name) for name in self.policies}

    @property
    def policies(self) -> list[str]:
        ks = sorted({*self.args.fixed, self.drafter.max_block})
        return ["none", *(f"fixed{k}" for k in ks), "prefix"]

    def _engine(self, name: str) -> SpecEngine:
        if name == "none":
            settings, drafter = GatewaySettings(drafter="none"), None
        elif name == "prefix":
            settings, drafter = GatewaySettings(policy="prefix"), self.drafter
        else:
            settings, drafter = GatewaySettings(policy="fixed", fixed_k=int(name.removeprefix("fixed"))), self.drafter
        return SpecEngine(self.verifier, drafter, build_policy(settings, drafter), tokenizer=self.target.tokenizer,
                          max_batch=self.args.max_batch)

    def run(self, name: str, concurrency: int) -> Run:
        """`concurrency` requests always in flight until the level's requests are done."""
        engine, args = self.engines[name], self.args
        total = max(args.requests, args.min_rounds * concurrency)
        added = 0

        def add() -> Request:
            nonlocal added
            params = SamplingParams(temperature=args.temperature, seed=added, max_tokens=args.max_tokens,
                                    ignore_eos=not args.stop_at_eos)
            request = engine.add_request(self.prompts[added % len(self.prompts)], params, request_id=f"{name}-{added}")
            added += 1
            return request

        live = [add() for _ in range(min(concurrency, total))]
        done: list[Request] = []
        start = time.perf_counter()
        while live:
            engine.step()
            finished = [r for r in live if r.finish_reason is not None]
            for r in finished:
                live.remove(r)
                done.append(r)
                if added < total:
                    live.append(add())
        wall = time.perf_counter() - start
        errors = [r for r in done if r.finish_reason == "error"]
        if errors:
            raise RuntimeError(f"{name}: {len(errors)} requests failed, first: {errors[0].error}")
        return Run(wall, sorted(done, key=lambda r: int(r.id.rsplit("-", 1)[1])))


def pooled(runs: list[dict]) -> dict:
    """A policy's figures at one level over its repeats: tokens over wall time, per-user speeds averaged."""
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    return {"aggregate_tps": tokens / wall, "per_user_tps": statistics.fmean(r["per_user_tps"] for r in runs),
            "drafted_share": statistics.fmean(r["drafted_share"] for r in runs),
            "verified_per_drafting_round": statistics.fmean(r["verified_per_drafting_round"] for r in runs),
            "committed_per_drafting_round": statistics.fmean(r["committed_per_drafting_round"] for r in runs)}


def ratios(level: dict, fixed: list[str]) -> dict:
    """Prefix against the best fixed k (pooled aggregate) and against no speculation (per user), with the range of
    the same ratio taken repeat by repeat (runs of one repeat are minutes apart, not the whole run)."""
    best = max(fixed, key=lambda name: level["pooled"][name]["aggregate_tps"])
    out = {"best_fixed": best}
    for key, other, metric in (("prefix_over_best_fixed", best, "aggregate_tps"),
                               ("prefix_over_none_per_user", "none", "per_user_tps")):
        per_repeat = [p[metric] / o[metric] for p, o in zip(level["runs"]["prefix"], level["runs"][other], strict=True)]
        out[key] = {"pooled": level["pooled"]["prefix"][metric] / level["pooled"][other][metric],
                    "per_repeat_min": min(per_repeat), "per_repeat_max": max(per_repeat)}
    return out


def worst(levels: dict, ratio: str, met) -> dict:
    """The level where a pooled ratio is lowest: its value, the level, and whether `met(value)`."""
    at = min(levels, key=lambda n: levels[n]["ratios"][ratio]["pooled"])
    value = levels[at]["ratios"][ratio]["pooled"]
    return {"value": value, "at": at, "met": met(value)}


def text_mismatches(texts: dict) -> dict:
    """Per (level, repeat, request): the policies whose tokens differ from no speculation's."""
    mismatches, compared = [], 0
    for key, by_policy in texts.items():
        reference = by_policy["none"]
        for name, digests in by_policy.items():
            for i, (a, b) in enumerate(zip(reference, digests, strict=True)):
                compared += name != "none"
                if a != b:
                    mismatches.append({"level_repeat": key, "policy": name, "request": i})
    return {"compared": compared, "mismatches": mismatches}


def plot(levels: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = next(iter(levels.values()))["pooled"]
    for name in names:
        xs = [levels[n]["pooled"][name]["aggregate_tps"] for n in args.concurrency]
        ys = [levels[n]["pooled"][name]["per_user_tps"] for n in args.concurrency]
        left.plot(xs, ys, marker="o", label=name, linewidth=2.5 if name == "prefix" else 1.2)
        for n, x, y in zip(args.concurrency, xs, ys, strict=True):
            left.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    left.set(xlabel="aggregate tokens/s", ylabel="per-user tokens/s", title="engine only (labels: requests in flight)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for key, label in (("prefix_over_best_fixed", "prefix / best fixed-k, aggregate"),
                       ("prefix_over_none_per_user", "prefix / none, per user")):
        r = [levels[n]["ratios"][key] for n in args.concurrency]
        mid = [x["pooled"] for x in r]
        err = [[m - x["per_repeat_min"] for m, x in zip(mid, r, strict=True)],
               [x["per_repeat_max"] - m for m, x in zip(mid, r, strict=True)]]
        right.errorbar(args.concurrency, mid, yerr=err, marker="o", capsize=3, label=label)
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.axhline(0.95, color="grey", linewidth=0.8, linestyle="--")
    right.set_xscale("log", base=2)
    right.set(xlabel="requests in flight", ylabel="ratio (bars: per-repeat range)", title="prefix scheduler")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"demo model, in-process engine, temperature {args.temperature:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    bench = Bench(args)
    policies = bench.policies
    fixed = [p for p in policies if p.startswith("fixed")]
    levels: dict[int, dict] = {n: {"runs": {p: [] for p in policies}} for n in args.concurrency}
    texts: dict[str, dict[str, list[str]]] = {}
    with logging_redirect_tqdm(), tqdm(total=len(policies) * (1 + len(levels) * args.repeats), desc="runs") as bar:
        for name in policies:  # warm-up: every engine's first rounds (and its round costs' first estimates)
            bench.run(name, min(2, args.max_batch))
            bar.update()
        for repeat in range(args.repeats):
            for n in args.concurrency:
                shift = repeat % len(policies)
                for name in policies[shift:] + policies[:shift]:
                    run = bench.run(name, n)
                    summary = run.summary()
                    levels[n]["runs"][name].append(summary)
                    if args.temperature == 0:
                        texts.setdefault(f"{n}/{repeat}", {})[name] = [
                            hashlib.sha256(str(r.output_ids).encode()).hexdigest()[:16] for r in run.requests]
                    log.info("repeat %d, %d in flight, %s: %.1f tokens/s, %.1f per user, drafted %.2f", repeat, n,
                             name, summary["aggregate_tps"], summary["per_user_tps"], summary["drafted_share"])
                    bar.update()
    for level in levels.values():
        level["pooled"] = {name: pooled(runs) for name, runs in level["runs"].items()}
        level["ratios"] = ratios(level, fixed)
    checks = {"prefix within 5 % of the best fixed-k (aggregate) at every level":
              worst(levels, "prefix_over_best_fixed", lambda v: v >= 0.95),
              "prefix beats no speculation per user at every level":
              worst(levels, "prefix_over_none_per_user", lambda v: v > 1.0)}
    agreement = text_mismatches(texts) if texts else {"compared": 0, "mismatches": [], "note": "sampled"}
    report = {"command": shlex.join([sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]), "args": vars(args),
              "environment": {**cpu_info(), "loadavg_1min": os.getloadavg()[0]},
              "wall_s": time.perf_counter() - start, "checks": checks, "text_agreement": agreement,
              "levels": levels}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    plot(levels, args, Path(args.plot))
    print("| in flight | " + " | ".join(policies) + " | best fixed | prefix/best fixed | prefix/none per user |")
    print("|---" * (len(policies) + 4) + "|")
    for n, level in levels.items():
        r = level["ratios"]
        cells = [f"{level['pooled'][p]['aggregate_tps']:.0f}" for p in policies]
        spans = [f"{r[k]['pooled']:.3f} ({r[k]['per_repeat_min']:.2f}-{r[k]['per_repeat_max']:.2f})"
                 for k in ("prefix_over_best_fixed", "prefix_over_none_per_user")]
        print(f"| {n} | " + " | ".join(cells) + f" | {r['best_fixed']} | " + " | ".join(spans) + " |")
    print()
    for name, check in checks.items():
        print(f"{'met ' if check['met'] else 'MISSED'} {name}: {check['value']:.3f} (at {check['at']})")
    print(f"texts: {agreement['compared']} compared, {len(agreement['mismatches'])} mismatching")
    print(f"wrote {args.out} and {args.plot} in {time.perf_counter() - start:.0f}s")
    return 1 if agreement["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
