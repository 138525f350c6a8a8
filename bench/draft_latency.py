"""Draft latency per round: DFlash, DSpark (vanilla and rnn sequential heads) and Eagle3, in one process.

One round is what the engine asks of a drafter after every verification: a single `propose` call that
commits a few tokens with their new target taps (`--new-tokens`, 3 by default) onto sessions of
`--context` committed tokens (256) and drafts the next block. Every round rolls the sessions back to the
same base, so the context stays put from round to round.

Setup (issue 3, "Benchmark"): a random Qwen3 target (hidden 512, 8 layers, 8 heads / 4 KV heads,
head_dim 64, intermediate 1536, vocab 32000, fp32) produces the taps of random tokens through
specserve's `CausalLM`; drafts read target layers 1, 3, 5, share the target's embedding and LM head
(frozen copies, as trained drafts do), and have 2 decoder layers (Eagle3: 1, the only depth it
supports). DSpark carries its confidence head (with the Markov feature) and a rank-`--markov-rank`
sequential head; DFlash is the same backbone without either.

Measured: DFlash / DSpark-vanilla / DSpark-rnn vs block size γ, Eagle3 vs drafted tokens, greedy and
temperature 1, at every `--batches` (sessions per propose). The cases of one sampling mode and batch
form a group; a sweep times one round of every case of the group, round-robin (the starting case
rotates), so the cases compared with each other run milliseconds apart. Each group gets `--rounds`
sweeps per repeat, after one warm-up repeat; a case's latency is the median of its repeats x rounds.
Two clocks: wall time, and the CPU time of the (single) torch thread, which leaves out the waits for a
core when other work shares the machine (meaningful with --threads 1 only).

Targets (issue 3): DSpark / DFlash at γ = 8 <= 1.10; DFlash and DSpark at γ = 16 / γ = 4 <= 1.5;
Eagle3's round cost linear in its tokens (least-squares fit, R² >= --linear-r2).

Kernels: the drafts' fp32 linears run specserve's few-row CPU products (`specserve.cpu_linear`; with
one thread up to 4 rows), as in serving. That makes a γ = 4 block (4 LM-head rows) far cheaper than
γ = 8..16, which stay on F.linear: compare `--torch-linears`, which keeps F.linear everywhere.

Writes --out (JSON: command, versions, CPU, raw timings, medians, ratios, targets met) and --plot (PNG),
and prints markdown tables. Set the thread pool explicitly and keep idle OpenMP workers from spinning:

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/draft_latency.py --threads 1       # ~6 min on 2 cores
  .venv/bin/python bench/draft_latency.py --device cuda:0 --dtype bfloat16 \
      --out bench/results/draft_latency_gpu.json --plot bench/results/draft_latency_gpu.png  # a GPU
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/draft_latency.py --repeats 1 --rounds 2 --batches 1 \\
      --gammas 4 8 --eagle-tokens 1 4 --out /tmp/dl.json --plot /tmp/dl.png                   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from environment import cpu_info  # bench/environment.py
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import Qwen3Config, Qwen3ForCausalLM

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftRequest
from specserve.drafters.checkpoint import build_model, model_class
from specserve.drafters.draft_config import DraftConfig, build_draft_config
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.eagle3_drafter import Eagle3Drafter
from specserve.target.model import CausalLM

log = logging.getLogger("bench.draft_latency")
BLOCK_DRAFTERS = ("dflash", "dspark-vanilla", "dspark-rnn")  # latency vs γ
MODES = {"greedy": 0.0, "t1": 1.0}  # sampling mode -> temperature
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CLOCKS = ("wall", "cpu")  # perf_counter, and this thread's CPU time (see Rounds.time)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("target (random Qwen3Config, fp32)")
    m.add_argument("--vocab", type=int, default=32000)
    m.add_argument("--hidden", type=int, default=512)
    m.add_argument("--layers", type=int, default=8)
    m.add_argument("--heads", type=int, default=8)
    m.add_argument("--kv-heads", type=int, default=4)
    m.add_argument("--head-dim", type=int, default=64)
    m.add_argument("--intermediate", type=int, default=1536)
    m.add_argument("--seed", type=int, default=0, help="seeds weights and tokens")
    d = p.add_argument_group("drafts")
    d.add_argument("--draft-layers", type=int, default=2, help="DSpark/DFlash decoder layers (Eagle3 has 1)")
    d.add_argument("--taps", type=int, nargs="+", default=[1, 3, 5], help="target layers the drafts read")
    d.add_argument("--markov-rank", type=int, default=64, help="rank of DSpark's sequential head")
    d.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="draft weights (DeepSpec ships bf16); the target and its taps stay fp32")
    d.add_argument("--device", default="cpu",
                   help="torch device of the target and drafts, e.g. cuda:0 (rounds are timed between two "
                        "synchronisations; the CPU-time clock then counts only the host's launch work)")
    d.add_argument("--torch-linears", action="store_true",
                   help="keep F.linear in the drafts (no specserve.cpu_linear few-row products), for comparison")
    d.add_argument("--gammas", type=int, nargs="+", default=[4, 8, 12, 16], help="DFlash/DSpark block sizes")
    d.add_argument("--eagle-tokens", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16],
                   help="Eagle3 tokens drafted per round")
    r = p.add_argument_group("rounds")
    r.add_argument("--context", type=int, default=256, help="committed tokens per session before a round")
    r.add_argument("--new-tokens", type=int, default=3, help="tokens (and taps) committed by each round")
    r.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="sessions per propose call")
    r.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    r.add_argument("--repeats", type=int, default=5, help="round-robin visits of every case after the warm-up")
    r.add_argument("--rounds", type=int, default=7, help="timed rounds per visit")
    r.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (explicit: the CPU is shared)")
    o = p.add_argument_group("targets and output")
    o.add_argument("--overhead-gamma", type=int, default=8)
    o.add_argument("--max-overhead", type=float, default=1.10, help="DSpark/DFlash at --overhead-gamma")
    o.add_argument("--max-growth", type=float, default=1.5, help="DFlash/DSpark at max(γ) / min(γ)")
    o.add_argument("--linear-r2", type=float, default=0.98, help="Eagle3 linear fit must reach this R²")
    here = Path(__file__).parent / "results"
    o.add_argument("--out", type=Path, default=here / "draft_latency.json")
    o.add_argument("--plot", type=Path, default=here / "draft_latency.png")
    args = p.parse_args(argv)
    if min(args.gammas) < 1 or min(args.eagle_tokens) < 1 or min(args.batches) < 1:
        p.error("--gammas, --eagle-tokens and --batches must be >= 1")
    if args.new_tokens < 1 or args.context < 2 or args.repeats < 1 or args.rounds < 1 or args.threads < 1:
        p.error("need --new-tokens >= 1, --context >= 2, --repeats/--rounds/--threads >= 1")
    if max(args.taps) > args.layers - 2 or min(args.taps) < 0:
        p.error(f"--taps must lie in [0, {args.layers - 2}] (Eagle3 cannot read -1; the last layer is normed)")
    return args


@dataclass(frozen=True)
class Case:
    """One measured configuration: drafter, γ or Eagle3 tokens, sampling mode, sessions per call."""

    drafter: str  # dflash | dspark-vanilla | dspark-rnn | eagle3
    tokens: int
    mode: str
    batch: int

    @property
    def key(self) -> str:
        return f"{self.drafter}/{self.tokens}/{self.mode}/b{self.batch}"


# ---- target features ---------------------------------------------------------------------------
def build_target(args) -> Qwen3ForCausalLM:
    torch.manual_seed(args.seed)  # weights drawn on the CPU, so every device times the same model
    cfg = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, head_dim=args.head_dim, max_position_embeddings=4096,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg).eval().requires_grad_(False).to(args.device)


def target_features(target, args, n: int) -> tuple[list[list[int]], torch.Tensor]:
    """n random sequences of context + new tokens and the target's taps of every position [n, T, m*H]."""
    rng = np.random.default_rng(args.seed)
    length = args.context + args.new_tokens
    tokens = rng.integers(0, args.vocab - 1, (n, length)).tolist()  # vocab - 1 is the mask token
    lm = CausalLM(target)
    names = [f"s{i}" for i in range(n)]
    for name in names:
        lm.open(name)
    return tokens, lm.forward(names, tokens, taps=args.taps).taps


# ---- drafts ---------------------------------------------------------------------------------------
def draft_config(target, args, drafter: str, gamma: int) -> DraftConfig:
    kind, _, head = drafter.partition("-")
    raw = build_draft_config(target.config, kind, target_layer_ids=args.taps,
                             num_layers=1 if kind == "eagle3" else args.draft_layers,
                             block_size=gamma, ttt_length=gamma, mask_token_id=args.vocab - 1,
                             markov_rank=args.markov_rank, markov_head_type=head or "vanilla")
    return DraftConfig.from_dict(raw)


def build_drafters(target, args) -> dict[tuple[str, int], DSparkDrafter | Eagle3Drafter]:
    """(drafter, γ) -> drafter; every γ of one drafter shares one set of weights (γ changes no shape).

    Eagle3 is one drafter with ttt_length = max(--eagle-tokens); its rounds cap the tokens via max_tokens.
    """
    shapes = [(name, args.gammas) for name in BLOCK_DRAFTERS] + [("eagle3", [max(args.eagle_tokens)])]
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    frozen = {"embed_tokens.weight": target.get_input_embeddings().weight.to(device, dtype),
              "lm_head.weight": target.get_output_embeddings().weight.to(device, dtype)}
    drafters = {}
    for name, gammas in shapes:
        torch.manual_seed(args.seed)
        cfg = draft_config(target, args, name, gammas[0])
        state = {k: v.to(device, dtype) for k, v in model_class(cfg)(cfg).state_dict().items()} | frozen
        for gamma in gammas:
            model = build_model(draft_config(target, args, name, gamma), device=device, dtype=dtype)
            model.load_state_dict(state, assign=True)
            model.requires_grad_(False)
            wrap = Eagle3Drafter if name == "eagle3" else DSparkDrafter
            drafters[name, gamma] = wrap(model, cpu_linears=not args.torch_linears)
    return drafters


class Rounds:
    """The sessions of one case and its round: roll back to `context` tokens, commit `new`, draft."""

    def __init__(self, case: Case, drafter, tokens: list[list[int]], taps: torch.Tensor, args):
        self.case, self.drafter, self.tokens, self.taps = case, drafter, tokens, taps
        self.base, self.new = args.context, args.new_tokens
        self.names = [f"{case.key}#{i}" for i in range(case.batch)]
        self.params = [SamplingParams(temperature=MODES[case.mode], seed=i, max_tokens=1 << 20, ignore_eos=True)
                       for i in range(case.batch)]
        for i, name in enumerate(self.names):
            drafter.open(name, tokens[i][: self.base], taps[i, : self.base - 1])

    def requests(self) -> list[DraftRequest]:
        # the target processed the old anchor and the accepted drafts: taps of base-1 .. base+new-2
        b, n = self.base, self.new
        return [DraftRequest(name, self.tokens[i][b : b + n], b + n, self.case.tokens, self.params[i],
                             position=b, new_taps=self.taps[i, b - 1 : b + n - 1])
                for i, name in enumerate(self.names)]

    def time(self) -> tuple[float, float]:
        """Wall and CPU seconds of one round (building the requests is the engine's work, not timed).

        With one torch thread every op runs on this thread, so its CPU time leaves out the time the
        process waited for a core: the latency a quiet machine would see, when the CPU is shared.
        """
        batch = self.requests()
        sync()
        wall, cpu = time.perf_counter(), time.thread_time()
        blocks = self.drafter.propose(batch)
        sync()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if any(b.error or len(b.ids) != self.case.tokens for b in blocks):
            raise RuntimeError(f"{self.case.key}: expected {self.case.tokens} drafts, got "
                               f"{[(len(b.ids), b.error) for b in blocks]}")
        return wall, cpu


def sync() -> None:
    """Wait for queued GPU work, so a round's wall time is its whole run (no-op on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def groups(args) -> list[list[Case]]:
    """Cases compared with each other: every drafter and γ / token count at one sampling mode and batch."""
    out = []
    for batch in args.batches:
        for mode in args.modes:
            group = [Case(name, g, mode, batch) for name in BLOCK_DRAFTERS for g in args.gammas]
            out.append(group + [Case("eagle3", n, mode, batch) for n in args.eagle_tokens])
    return out


def sweeps(args, all_groups: list[list[Case]]) -> list[tuple[int, list[Case]]]:
    """(repeat, cases in timing order): one round of every case of a group, then the next round.

    Neighbouring cases run milliseconds apart, so load from other processes hits every case of a group
    alike; the starting case rotates every sweep and the group order every repeat. Repeat 0 warms up.
    """
    out = []
    for rep in range(args.repeats + 1):
        for g in range(len(all_groups)):
            group = all_groups[(rep + g) % len(all_groups)]
            for r in range(args.rounds):
                shift = (rep * args.rounds + r) % len(group)
                out.append((rep, group[shift:] + group[:shift]))
    return out


# ---- the run ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.threads > 1:
        log.warning("--threads %d: the CPU-time clock counts only the calling thread", args.threads)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        log.warning("OMP_WAIT_POLICY is not PASSIVE: idle OpenMP workers spin and steal the shared CPU")
    started = time.perf_counter()
    target = build_target(args)
    log.info("target: Qwen3 %.1f M parameters; %d torch threads; loadavg %s",
             sum(p.numel() for p in target.parameters()) / 1e6, torch.get_num_threads(), os.getloadavg())
    tokens, taps = target_features(target, args, max(args.batches))
    drafters = build_drafters(target, args)
    all_groups = groups(args)
    all_cases = [c for group in all_groups for c in group]
    runs = {c.key: Rounds(c, drafters[c.drafter, c.tokens if c.drafter != "eagle3" else max(args.eagle_tokens)],
                          tokens, taps, args) for c in all_cases}
    log.info("%d cases, %d drafters built in %.1f s", len(all_cases), len(drafters), time.perf_counter() - started)

    raw = {clock: {c.key: [] for c in all_cases} for clock in CLOCKS}  # seconds per round, in sweep order
    loads = []
    schedule = sweeps(args, all_groups)
    with logging_redirect_tqdm(), tqdm(schedule, desc="draft rounds", unit="sweep") as bar:
        for i, (rep, order) in enumerate(bar):
            bar.set_postfix_str(f"{'warm-up' if rep == 0 else f'repeat {rep}'} {order[0].mode} b{order[0].batch}")
            for case in order:
                seconds = runs[case.key].time()
                if rep:
                    for clock, t in zip(CLOCKS, seconds, strict=True):
                        raw[clock][case.key].append(t)
            loads.append(os.getloadavg()[0])
            if i + 1 == len(schedule) or schedule[i + 1][0] != rep:
                log.info("%s done at %.0f s, loadavg %.2f", "warm-up" if rep == 0 else f"repeat {rep}",
                         time.perf_counter() - started, loads[-1])

    results = summarise(args, all_cases, raw)
    results.update(command=shlex.join([sys.executable, *sys.argv]),
                   environment=cpu_info() | {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                                             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                                             "device": args.device,
                                             "gpu": torch.cuda.get_device_name(torch.device(args.device))
                                             if torch.device(args.device).type == "cuda" else None},
                   target={"parameters": sum(p.numel() for p in target.parameters()),
                           **target.config.to_diff_dict()},
                   drafts={name: draft_summary(d) for (name, _), d in drafters.items()},
                   loadavg_1min={"min": min(loads), "max": max(loads)},
                   wall_s=time.perf_counter() - started,
                   raw_seconds_per_round=raw,
                   args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args)
    log.info("wrote %s and %s in %.0f s", args.out, args.plot, results["wall_s"])
    print(markdown(results, args))
    return 0


def draft_summary(drafter) -> dict:
    cfg = drafter.model.cfg
    own = sum(p.numel() for n, p in drafter.model.named_parameters() if n not in ("embed_tokens.weight",
                                                                                 "lm_head.weight"))
    return {"kind": cfg.kind, "layers": cfg.num_layers, "markov_rank": cfg.markov_rank,
            "markov_head_type": cfg.markov_head_type, "confidence_head": cfg.confidence_head,
            "target_layer_ids": list(cfg.target_layer_ids), "parameters_without_frozen_embed_and_head": own}


# ---- results ---------------------------------------------------------------------------------------
def summarise(args, all_cases: list[Case], raw: dict) -> dict:
    """Per case and clock: median and quartiles (ms). Checks: the issue's targets on wall-clock medians,
    each also given as the paired per-sweep median and on CPU time."""
    ms = {clock: {k: [t * 1e3 for t in v] for k, v in per.items()} for clock, per in raw.items()}
    latency = {}
    for c in all_cases:
        latency[c.key] = asdict(c)
        for clock in CLOCKS:
            x = ms[clock][c.key]
            q1, _, q3 = statistics.quantiles(x, n=4, method="inclusive") if len(x) > 1 else x * 3
            latency[c.key] |= {f"{clock}_ms_median": statistics.median(x), f"{clock}_ms_q1": q1,
                               f"{clock}_ms_q3": q3, f"{clock}_ms_min": min(x)}
        latency[c.key]["rounds"] = len(ms["wall"][c.key])
    checks = {}
    g, lo, hi = args.overhead_gamma, min(args.gammas), max(args.gammas)
    for batch in args.batches:
        for mode in args.modes:
            def times(name, n, mode=mode, batch=batch):
                key = Case(name, n, mode, batch).key
                return {clock: ms[clock][key] for clock in CLOCKS}
            where = f"{mode} b{batch}"
            if g in args.gammas:
                for head in BLOCK_DRAFTERS[1:]:
                    checks[f"{head}/dflash γ={g} {where}"] = _ratio(times(head, g), times("dflash", g),
                                                                    args.max_overhead)
            for name in BLOCK_DRAFTERS:
                checks[f"{name} γ={hi}/γ={lo} {where}"] = _ratio(times(name, hi), times(name, lo), args.max_growth)
            eagle = [times("eagle3", n) for n in args.eagle_tokens]
            fits = {clock: _linear_fit(args.eagle_tokens, [statistics.median(t[clock]) for t in eagle])
                    for clock in CLOCKS}
            checks[f"eagle3 ms vs tokens {where}"] = {**fits["wall"], "cpu": fits["cpu"],
                                                      "target": f"R² >= {args.linear_r2}",
                                                      "met": fits["wall"]["r2"] >= args.linear_r2}
    return {"latency": latency, "checks": checks, "all_targets_met": all(c["met"] for c in checks.values())}


def _ratio(num: dict, den: dict, limit: float) -> dict:
    """Ratio of wall medians (checked against `limit`), the median of per-sweep wall ratios (the two
    rounds of a sweep ran milliseconds apart, so load drifts cancel), and the ratio of CPU medians."""
    med = {clock: statistics.median(num[clock]) / statistics.median(den[clock]) for clock in CLOCKS}
    paired = statistics.median(a / b for a, b in zip(num["wall"], den["wall"], strict=True))
    return {"ratio": med["wall"], "paired_median": paired, "cpu_ratio": med["cpu"], "target": f"<= {limit}",
            "met": med["wall"] <= limit}


def _linear_fit(x: list[int], y: list[float]) -> dict:
    if len(x) < 2:
        return {"slope_ms_per_token": float("nan"), "intercept_ms": float("nan"), "r2": float("nan")}
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * np.asarray(x) + intercept
    ss_res, ss_tot = float(((np.asarray(y) - pred) ** 2).sum()), float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    return {"slope_ms_per_token": float(slope), "intercept_ms": float(intercept),
            "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def plot(res: dict, args) -> None:
    fig, axes = plt.subplots(len(args.batches), len(args.modes), figsize=(5.5 * len(args.modes),
                             4 * len(args.batches)), squeeze=False, sharex=True)
    for row, batch in enumerate(args.batches):
        for col, mode in enumerate(args.modes):
            ax = axes[row][col]
            for color, name in enumerate((*BLOCK_DRAFTERS, "eagle3")):
                points = sorted((x["tokens"], x["wall_ms_median"], x["wall_ms_q1"], x["wall_ms_q3"], x["cpu_ms_median"])
                                for x in res["latency"].values()
                                if x["drafter"] == name and x["mode"] == mode and x["batch"] == batch)
                n, med, low, high, cpu = map(np.asarray, zip(*points))
                ax.errorbar(n, med, yerr=[med - low, high - med], marker="o", capsize=3, color=f"C{color}",
                            label=f"{name} (wall)")
                ax.plot(n, cpu, ls="--", marker=".", color=f"C{color}", alpha=0.6, label=f"{name} (CPU time)")
            ax.set_title(f"{mode}, {batch} session{'s' if batch > 1 else ''} per propose")
            ax.set_xlabel("γ (block drafters) / drafted tokens (Eagle3)")
            ax.set_ylabel("ms per round (median; wall with quartiles)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Draft round latency ({args.dtype}, markov rank {args.markov_rank}), context {args.context} + "
                 f"{args.new_tokens} new tokens, {args.threads} torch thread(s)")
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)


def markdown(res: dict, args) -> str:
    columns = [(mode, batch) for batch in args.batches for mode in args.modes]
    lines = ["ms per round, median wall clock (median CPU time of the round's thread)", "",
             "| drafter | γ / tokens | " + " | ".join(f"{m} b{b}" for m, b in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name in (*BLOCK_DRAFTERS, "eagle3"):
        for n in args.gammas if name != "eagle3" else args.eagle_tokens:
            cells = [res["latency"][Case(name, n, m, b).key] for m, b in columns]
            lines.append(f"| {name} | {n} | " + " | ".join(f"{x['wall_ms_median']:.2f} ({x['cpu_ms_median']:.2f})"
                                                         for x in cells) + " |")
    lines += ["", "| check | wall | wall, paired per sweep | CPU time | target | met |", "|---|---:|---:|---:|---|---|"]
    for name, x in res["checks"].items():
        if "ratio" in x:
            cells = f"{x['ratio']:.3f} | {x['paired_median']:.3f} | {x['cpu_ratio']:.3f}"
        else:
            cells = (f"{x['slope_ms_per_token']:.2f} ms/token + {x['intercept_ms']:.2f} ms, R² {x['r2']:.4f} | | "
                     f"{x['cpu']['slope_ms_per_token']:.2f} ms/token, R² {x['cpu']['r2']:.4f}")
        lines.append(f"| {name} | {cells} | {x['target']} | {'yes' if x['met'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
