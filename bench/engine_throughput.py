"""Engine throughput on one randomly initialised ~150 M Qwen3 (fp32, sdpa, CPU), every row in one process.

Rows (targets from issue 2):
  a  HF `generate`, greedy, random-token prompt
  b  specserve without a drafter, same prompt                          target: b >= 0.95 x a
  c  specserve + ngram drafter, repetitive prompt (a snippet repeated)
  d  HF `generate(prompt_lookup_num_tokens=k)`, same prompt            target: c >= d
  e  LocalVerifier.verify of R sessions (different context lengths, 4-8 draft tokens each) in one call
     vs the same R sessions verified by R one-session calls, at R = 1, 4, 16   target: R=16 ratio >= 3
  A, D  rows a and d again, HF `generate` on the model `CausalLM` prepared: linears switched to
     specserve's few-row CPU GEMM (`specserve.cpu_linear`) and attention to its grouped-head SDPA
     (`specserve.target.attention`, used by D's multi-token steps). Not targets: they show how much of
     b/a and c/d is those kernels and how much the engine and the drafter.

Rows a and d run on their own copy of the model, untouched by specserve, as a user of HF gets it;
b, c, e, A and D on the copy that `CausalLM` prepared (same seed, same weights).

Random weights make greedy output repetitive; that is fine because a==b and c==d are checked token
for token (both are greedy decodes of the same model), so the speed comparison is between identical
outputs. Every path is warmed up once, then the rows run round-robin `--repeats` times (the start
row rotates each repeat) so machine noise hits all rows alike; medians are reported. tokens/s is
new tokens / wall time of the whole call (prefill included). Batched and one-at-a-time verify steps
alternate step by step on the same sessions.

Writes --out (JSON: command, versions, CPU, every raw timing, medians, ratios) and prints a markdown
table. Exits 1 if an output pair differs (after writing the JSON). Before and after every run a 1 MiB
multi-threaded fill is timed: a few microseconds on a quiet machine, ~8 ms when another process holds
a core (each OpenMP region then waits for a scheduler slice). Every probe is recorded in the
JSON and a warning is logged; rerun when the machine is quiet.

  .venv/bin/python bench/engine_throughput.py                 # the committed run (~3 min on 2 quiet cores)
  .venv/bin/python bench/engine_throughput.py --layers 2 --repeats 1 --max-new-tokens 16   # smoke
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
from pathlib import Path

import numpy as np
import torch
from environment import cpu_info  # bench/environment.py
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import Qwen3Config, Qwen3ForCausalLM

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier, OpenRequest, VerifyRequest
from specserve.target.model import CausalLM

log = logging.getLogger("bench.engine_throughput")
ROWS = ("a", "b", "c", "d", "e", "A", "D")
GEN_ROWS = ("a", "b", "c", "d", "A", "D")
DESCRIPTION = {"a": "HF generate, greedy", "b": "specserve, no drafter",
               "c": "specserve + ngram", "d": "HF generate + prompt lookup",
               "A": "HF generate, greedy, specserve's CPU GEMM",
               "D": "HF generate + prompt lookup, specserve's CPU GEMM"}


def parse_args(argv=None) -> argparse.Namespace:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    m = p.add_argument_group("model (Qwen3Config; defaults give 149.8 M parameters)")
    m.add_argument("--vocab", type=int, default=32000, help="vocab_size")
    m.add_argument("--hidden", type=int, default=768, help="hidden_size")
    m.add_argument("--layers", type=int, default=16, help="num_hidden_layers")
    m.add_argument("--heads", type=int, default=12, help="num_attention_heads")
    m.add_argument("--kv-heads", type=int, default=4, help="num_key_value_heads")
    m.add_argument("--head-dim", type=int, default=64, help="head_dim")
    m.add_argument("--intermediate", type=int, default=2048, help="intermediate_size (MLP)")
    m.add_argument("--seed", type=int, default=0, help="seeds the weights, prompts and drafts")
    g = p.add_argument_group("generation rows a-d (batch of one request)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per request (EOS ignored)")
    g.add_argument("--prompt-len", type=int, default=128, help="random-token prompt of rows a/b")
    g.add_argument("--snippet-len", type=int, default=32, help="rows c/d: a random snippet of this many tokens...")
    g.add_argument("--snippet-repeats", type=int, default=4, help="...repeated this many times")
    g.add_argument("--lookup-tokens", type=int, default=8, help="draft tokens per round for c and d")
    g.add_argument("--lookup-ngram", type=int, default=3, help="longest n-gram matched, for c and d alike")
    v = p.add_argument_group("batched verify row e")
    v.add_argument("--verify-r", type=int, nargs="+", default=[1, 4, 16], help="sessions per verify call")
    v.add_argument("--verify-steps", type=int, default=3, help="batched/one-at-a-time step pairs per repeat")
    v.add_argument("--ctx-min", type=int, default=64, help="shortest session context")
    v.add_argument("--ctx-max", type=int, default=256, help="longest session context")
    v.add_argument("--draft-min", type=int, default=4, help="session i verifies draft-min + i %% (span) random drafts")
    v.add_argument("--draft-max", type=int, default=8, help="most draft tokens of one session")
    r = p.add_argument_group("run")
    r.add_argument("--rows", default=",".join(ROWS),
                   help="comma-separated subset of a,b,c,d,e,A,D (e.g. for profiling)")
    r.add_argument("--repeats", type=int, default=3, help="round-robin repeats after one warm-up of every row")
    r.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's default")
    r.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_throughput.json",
                   help="JSON results file")
    args = p.parse_args(argv)
    args.rows = [x.strip() for x in args.rows.split(",") if x.strip()]
    if bad := set(args.rows) - set(ROWS):
        p.error(f"--rows: unknown {sorted(bad)}, choose from {ROWS}")
    if not 1 <= args.draft_min <= args.draft_max:
        p.error(f"need 1 <= --draft-min <= --draft-max, got {args.draft_min}, {args.draft_max}")
    if not 1 <= args.ctx_min <= args.ctx_max:
        p.error(f"need 1 <= --ctx-min <= --ctx-max, got {args.ctx_min}, {args.ctx_max}")
    if args.repeats < 1 or args.verify_steps < 1 or min(args.verify_r) < 1:
        p.error("--repeats, --verify-steps and --verify-r must be >= 1")
    return args


def build_model(args) -> Qwen3ForCausalLM:
    torch.manual_seed(args.seed)
    cfg = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, head_dim=args.head_dim, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    # no EOS anywhere: HF generate runs to max_new_tokens without suppressing a logit
    return Qwen3ForCausalLM(cfg).eval().requires_grad_(False)


class ForwardCounter:
    """Counts decoder forwards (HF and specserve both call `model.model`), i.e. target steps."""

    def __init__(self, *decoders: torch.nn.Module):
        self.calls = 0
        for decoder in decoders:
            decoder.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


# ---- rows a-d ---------------------------------------------------------------------------------
def hf_generate(model, prompt: list[int], n: int, lookup: int = 0, ngram: int = 0) -> tuple[list[int], dict]:
    ids = torch.tensor([prompt])
    extra = dict(prompt_lookup_num_tokens=lookup, max_matching_ngram_size=ngram) if lookup else {}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, **extra)
    return out[0, len(prompt):].tolist(), {}


def spec_generate(engine: SpecEngine, prompt: list[int], n: int) -> tuple[list[int], dict]:
    [req] = engine.generate([prompt], SamplingParams(max_tokens=n, ignore_eos=True, seed=0))
    s = req.stats
    return req.output_ids, {"rounds": len(s.rounds), "tau": s.tau, "accepted": s.accepted, "verified": s.verified}


# ---- row e --------------------------------------------------------------------------------------
class VerifyPool:
    """Open sessions of different context lengths, verified in one call or one call per session.

    Drafts are random tokens (almost always rejected); the target forward costs the same whatever is
    accepted, and each step grows a session by only its committed tokens, so contexts stay put.
    """

    def __init__(self, target: CausalLM, n: int, args, rng: np.random.Generator):
        self.verifier = LocalVerifier(target)
        self.params = SamplingParams(max_tokens=1 << 20, ignore_eos=True, seed=0)
        self.ctx = [int(x) for x in rng.permutation(np.linspace(args.ctx_min, args.ctx_max, n).round())]
        self.n_drafts = [args.draft_min + i % (args.draft_max - args.draft_min + 1) for i in range(n)]
        self.names = [f"v{i}" for i in range(n)]
        self.committed = [c + 1 for c in self.ctx]
        self.position = [1] * n
        self.rng, self.vocab = rng, args.vocab
        prompts = [rng.integers(0, self.vocab, c).tolist() for c in self.ctx]
        for i in range(0, n, 4):  # prefill in small batches to bound padding and memory
            self.verifier.open([OpenRequest(s, p, self.params) for s, p in zip(self.names[i:i + 4], prompts[i:i + 4])])

    def requests(self, r: int) -> list[VerifyRequest]:
        drafts = [self.rng.integers(0, self.vocab, self.n_drafts[i]).tolist() for i in range(r)]
        return [VerifyRequest(self.names[i], self.committed[i], drafts[i], None, self.params, self.position[i])
                for i in range(r)]

    def verify(self, items: list[VerifyRequest]) -> float:
        start = time.perf_counter()
        results = self.verifier.verify(items)
        elapsed = time.perf_counter() - start
        for res in results:
            i = self.names.index(res.session)
            self.committed[i] += len(res.tokens)
            self.position[i] += len(res.tokens)
        return elapsed

    def step_pair(self, r: int) -> tuple[float, float]:
        """One batched verify of sessions 0..r-1, then r one-session verifies; seconds for each."""
        batched = self.verify(self.requests(r))
        single = sum(self.verify([item]) for item in self.requests(r))
        return batched, single


# ---- the run ------------------------------------------------------------------------------------
def parallel_op_latency_us() -> float:
    """Median time of one small multi-threaded op (a 1 MiB fill). On a quiet machine this is tens of
    microseconds; when another process holds a core, every OpenMP region waits for a scheduler slice
    (~8 ms here) and the timings below measure the neighbour, not the code."""
    buf = torch.empty(1 << 18)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        buf.fill_(1.0)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def first_mismatch(x: list[int], y: list[int]) -> int | None:
    for i, (s, t) in enumerate(zip(x, y)):
        if s != t:
            return i
    return None if len(x) == len(y) else min(len(x), len(y))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = build_model(args)
    hf_model = build_model(args)  # rows a, d: the same weights, left as transformers made them
    n_params = sum(p.numel() for p in model.parameters())
    counter = ForwardCounter(model.get_decoder(), hf_model.get_decoder())
    log.info("Qwen3 %.1f M parameters, %d layers, fp32 sdpa, %d torch threads, loadavg %s",
             n_params / 1e6, args.layers, torch.get_num_threads(), os.getloadavg())
    probes = [parallel_op_latency_us()]
    if probes[0] > 1000:
        log.warning("a 1 MiB parallel fill takes %.0f us: the CPU is shared with another busy process, "
                    "timings will be dominated by thread wake-ups", probes[0])

    random_prompt = rng.integers(0, args.vocab, args.prompt_len).tolist()
    repetitive_prompt = rng.integers(0, args.vocab, args.snippet_len).tolist() * args.snippet_repeats
    n = args.max_new_tokens
    target = CausalLM(model)  # switches model's fp32 linears to specserve's CPU GEMM
    plain = SpecEngine(LocalVerifier(target))
    ngram = SpecEngine(LocalVerifier(target), NgramDrafter(max_block=args.lookup_tokens, max_ngram=args.lookup_ngram))
    generators = {
        "a": lambda: hf_generate(hf_model, random_prompt, n),
        "b": lambda: spec_generate(plain, random_prompt, n),
        "c": lambda: spec_generate(ngram, repetitive_prompt, n),
        "d": lambda: hf_generate(hf_model, repetitive_prompt, n, args.lookup_tokens, args.lookup_ngram),
        "A": lambda: hf_generate(model, random_prompt, n),
        "D": lambda: hf_generate(model, repetitive_prompt, n, args.lookup_tokens, args.lookup_ngram),
    }
    gen_rows = [row for row in GEN_ROWS if row in args.rows]
    verify_rs = sorted(set(args.verify_r)) if "e" in args.rows else []
    pool = None
    if verify_rs:
        log.info("prefilling %d verify sessions (contexts %d..%d)", max(verify_rs), args.ctx_min, args.ctx_max)
        pool = VerifyPool(target, max(verify_rs), args, rng)

    jobs = [("gen", row) for row in gen_rows] + [("verify", r) for r in verify_rs]
    raw = {row: [] for row in gen_rows} | {f"e_R{r}": [] for r in verify_rs}
    outputs: dict[str, list[list[int]]] = {row: [] for row in gen_rows}
    schedule = [(rep, jobs[(rep + i) % len(jobs)]) for rep in range(args.repeats + 1) for i in range(len(jobs))]
    loads = []
    with logging_redirect_tqdm(), tqdm(schedule, desc="bench", unit="run") as bar:
        for rep, (kind, key) in bar:
            warm = rep == 0
            bar.set_postfix_str(f"{'warm-up' if warm else f'repeat {rep}'} {kind} {key}")
            if kind == "gen":
                before = counter.calls
                start = time.perf_counter()
                tokens, extra = generators[key]()
                seconds = time.perf_counter() - start
                outputs[key].append(tokens)
                entry = {"repeat": rep, "warmup": warm, "seconds": seconds, "new_tokens": len(tokens),
                         "tokens_per_s": len(tokens) / seconds, "forwards": counter.calls - before, **extra}
                log.info("%s %s: %.2f tok/s (%d forwards)", "warm-up" if warm else f"repeat {rep}", key,
                         entry["tokens_per_s"], entry["forwards"])
            else:
                pairs = [pool.step_pair(key) for _ in range(args.verify_steps)]
                entry = {"repeat": rep, "warmup": warm, "batched_s": [b for b, _ in pairs],
                         "one_at_a_time_s": [s for _, s in pairs]}
                log.info("%s verify R=%d: batched %.3f s, one-at-a-time %.3f s (medians)",
                         "warm-up" if warm else f"repeat {rep}", key,
                         statistics.median(entry["batched_s"]), statistics.median(entry["one_at_a_time_s"]))
            probes.append(parallel_op_latency_us())
            entry["parallel_fill_after_us"] = probes[-1]
            raw[key if kind == "gen" else f"e_R{key}"].append(entry)
            loads.append(os.getloadavg()[0])

    results = summarise(args, raw, outputs, pool)
    results.update(command=shlex.join([sys.executable, *sys.argv]), environment=cpu_info(),
                   model={"parameters": n_params, **model.config.to_diff_dict()},
                   prompts={"random_len": len(random_prompt), "repetitive_len": len(repetitive_prompt),
                            "snippet_len": args.snippet_len, "snippet_repeats": args.snippet_repeats},
                   loadavg_1min={"min": min(loads), "max": max(loads), "per_run": loads},
                   parallel_fill_1mib_us={"median": statistics.median(probes), "max": max(probes), "per_run": probes},
                   raw=raw,
                   args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    if max(probes) > 1000:
        log.warning("%d of %d parallel-op probes exceeded 1 ms: another process competed for the CPU; "
                    "rerun if the min-max spread is wide", sum(p > 1000 for p in probes), len(probes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log.info("wrote %s", args.out)
    print(markdown(results))
    broken = [pair for pair, check in results["identical"].items() if not check["all_identical"]]
    if broken:
        log.error("outputs differ for %s: see 'identical' in %s", broken, args.out)
        return 1
    return 0


def summarise(args, raw: dict, outputs: dict, pool: VerifyPool | None) -> dict:
    measured = {key: [e for e in entries if not e["warmup"]] for key, entries in raw.items()}
    rows = {}
    for row in (r for r in GEN_ROWS if r in raw):
        tps = [e["tokens_per_s"] for e in measured[row]]
        last = measured[row][-1]
        rows[row] = {"description": DESCRIPTION[row], "tokens_per_s_median": statistics.median(tps),
                     "tokens_per_s_min": min(tps), "tokens_per_s_max": max(tps),
                     "forwards": last["forwards"], "tokens_per_forward": last["new_tokens"] / last["forwards"]}
        if "tau" in last:
            rows[row]["tau"] = last["tau"]
    identical = {}
    for x, y in (("a", "b"), ("c", "d"), ("A", "b"), ("D", "c")):
        if x in outputs and y in outputs:
            per_run = [first_mismatch(p, q) for p, q in zip(outputs[x], outputs[y])]
            identical[f"{x}=={y}"] = {"all_identical": all(m is None for m in per_run),
                                      "first_mismatch_per_run": per_run, "tokens": len(outputs[x][0])}
    verify = {}
    for key in (k for k in raw if k.startswith("e_R")):
        r = int(key[3:])
        batched = [t for e in measured[key] for t in e["batched_s"]]
        single = [t for e in measured[key] for t in e["one_at_a_time_s"]]
        b, s = statistics.median(batched), statistics.median(single)
        paired = [sr / br for e in measured[key] for br, sr in zip(e["batched_s"], e["one_at_a_time_s"])]
        verify[key] = {"R": r, "contexts": pool.ctx[:r], "draft_tokens": pool.n_drafts[:r],
                       "batched_steps_per_s": 1 / b, "batched_seqs_per_s": r / b, "one_at_a_time_seqs_per_s": r / s,
                       "ratio": s / b, "ratio_paired_median": statistics.median(paired)}
    checks = {}
    if "a" in rows and "b" in rows:
        checks["b/a"] = (rows["b"]["tokens_per_s_median"] / rows["a"]["tokens_per_s_median"], 0.95)
    if "c" in rows and "d" in rows:
        checks["c/d"] = (rows["c"]["tokens_per_s_median"] / rows["d"]["tokens_per_s_median"], 1.0)
    info = {}  # same kernels on both sides: what the engine and the drafter add by themselves
    if "A" in rows and "b" in rows:
        info["b/A"] = rows["b"]["tokens_per_s_median"] / rows["A"]["tokens_per_s_median"]
    if "D" in rows and "c" in rows:
        info["c/D"] = rows["c"]["tokens_per_s_median"] / rows["D"]["tokens_per_s_median"]
    if "e_R16" in verify:
        checks["verify R=16 batched/one-at-a-time"] = (verify["e_R16"]["ratio"], 3.0)
    checks = {name: {"value": value, "target": f">= {target}", "met": value >= target}
              for name, (value, target) in checks.items()}
    return {"rows": rows, "verify": verify, "identical": identical, "checks": checks, "same_kernel_ratios": info}


def markdown(res: dict) -> str:
    lines = ["| row | what | tokens/s (median) | min – max | forwards | tokens/forward |",
             "|---|---|---:|---:|---:|---:|"]
    for row, x in res["rows"].items():
        lines.append(f"| {row} | {x['description']} | {x['tokens_per_s_median']:.2f} | "
                     f"{x['tokens_per_s_min']:.2f} – {x['tokens_per_s_max']:.2f} | {x['forwards']} | "
                     f"{x['tokens_per_forward']:.2f} |")
    if res["verify"]:
        lines += ["", "| R | contexts | drafts | batched steps/s | batched seqs/s | one-at-a-time seqs/s | ratio |",
                  "|---:|---|---|---:|---:|---:|---:|"]
        for x in res["verify"].values():
            ctx = f"{min(x['contexts'])}–{max(x['contexts'])}"
            drafts = f"{min(x['draft_tokens'])}–{max(x['draft_tokens'])}"
            lines.append(f"| {x['R']} | {ctx} | {drafts} | {x['batched_steps_per_s']:.2f} | "
                         f"{x['batched_seqs_per_s']:.2f} | {x['one_at_a_time_seqs_per_s']:.2f} | {x['ratio']:.2f}× |")
    lines += ["", "| check | value | met |", "|---|---:|---|"]
    for name, check in res["checks"].items():
        met = "yes" if check["met"] else "NO"
        lines.append(f"| {name} (target {check['target']}) | {check['value']:.3f} | {met} |")
    for name, value in res.get("same_kernel_ratios", {}).items():
        lines.append(f"| {name} (same GEMM both sides, no target) | {value:.3f} | – |")
    for pair, check in res["identical"].items():
        lines.append(f"| outputs {pair} ({check['tokens']} tokens) | {check['first_mismatch_per_run']} | "
                     f"{'yes' if check['all_identical'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
