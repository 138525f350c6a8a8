"""Serving under load: aggregate and per-user tokens/s vs concurrency, per budget policy, embedded vs gRPC.

The paper's Figure 7 shape (issue 6, "Benchmark"): the real gateway is started as its own process
and driven over HTTP (`/v1/completions`) by N concurrent streams, N in `--concurrency`. Every stream
sends `--requests-per-stream` requests (more at low N, so that a level sends at least `--min-requests`)
one after the other (a closed loop), so about N requests are in flight at every moment. Policies (one
gateway each):

  none      no drafter, plain decoding (`--drafter none`)
  fixed2    the drafter, fixed-k with k = 2
  fixedγ    the drafter, fixed-k with k = γ (the draft's block size)
  prefix    the drafter with the hardware-aware prefix scheduler (Algorithm 1; SPS profiled at start-up)

Modes: `embedded` (`specserve serve`: one process) and `grpc` (`specserve serve-verifier` and
`specserve serve-drafter` processes on loopback, the gateway as `specserve serve-gateway`). Both modes
run the same policies on the same prompts in this one run. All gateways of a mode run at once (an idle
one sleeps) and are measured interleaved: every concurrency level runs `--repeats` rounds, each round
one level per policy in a rotated order, so a drift of the machine's speed hits every policy alike;
a policy's figures pool its rounds, and the JSON keeps each round's summary. Threads: the embedded process gets
`--threads` torch threads (default 1, which is also `specserve serve`'s own default on 2 cores:
usable cores - 1), the gRPC verifier `--verifier-threads` (default 2), the drafter service and the
gateway of the gRPC mode one each; each mode runs at its best setting on this 2-core machine. In
the embedded process the load generator and the gateway's event loop need a core while the engine
computes: with 2 torch threads an OpenMP worker is preempted inside the hundreds of small parallel
regions of a speculative round and every other worker waits at the barrier (fixed-2 at c=1: 70 tok/s
per user with 2 threads, 137 with 1; no speculation: 162 and 164; at c=8 no speculation gains from 2
threads, 774 vs 643 aggregate, but every drafting policy collapses). The verifier service spends its
time in the model while the gateway and drafter processes mostly wait on its answer, so it gains from
both cores (c=8 aggregate, gRPC: no speculation 603 tok/s with 2 verifier threads vs 509 with 1,
prefix 544 vs 471). OpenMP keeps its default wait policy: `OMP_WAIT_POLICY=PASSIVE` puts every
worker to sleep between parallel regions and halved the demo model's speed here.

Sampling is at temperature 1 (the API default; the demo DSpark draft's STS temperatures were fitted
at it) with a fixed seed per prompt, and requests ignore EOS, so every policy generates the same
number of tokens. Sampled texts differ between policies (the rejection sampler draws differently when
rounds differ) but follow the same distribution. With `--temperature 0` every policy must produce the
same tokens for the same prompt (lossless), and the texts are compared across all configurations
(mismatches are counted; a batched fp32 forward may break an exact logit tie differently).

Metrics per (mode, policy, concurrency): aggregate tokens/s = completion tokens of all requests /
wall time of the level; per-user tokens/s = mean over requests of completion tokens / request latency
(time to first token included); drafted share = the share of request-rounds that verified drafts, from
the gateway's /metrics (spec_decode_num_drafts / the summed verify batch sizes): what the prefix policy
chose at that level, 0 where it decoded plainly. Targets (issue 6): the prefix scheduler is never below the best
fixed-k by more than 5 % (aggregate tokens/s) at any concurrency, and beats no speculation per user
at every concurrency; the gRPC split costs ≤ 15 % of embedded aggregate throughput at concurrency 8
(prefix policy).

Writes --out (JSON: command, environment, raw per-request records, summaries, checks) and --plot (PNG:
per-user tokens/s against aggregate tokens/s, one curve per policy, one panel per mode).

  .venv/bin/python bench/serving_concurrency.py --repeats 3                      # the committed run (17-27 min)
      # (the committed one also kept its services' logs: --log-dir /tmp/... --verbose-gateways)
  .venv/bin/python bench/serving_concurrency.py --temperature 0 --stop-at-eos \
      --out bench/results/serving_concurrency_greedy.json \
      --plot bench/results/serving_concurrency_greedy.png                       # the committed greedy run (11-20 min)
  .venv/bin/python bench/serving_concurrency.py --concurrency 1 4 --requests-per-stream 1 --max-tokens 16 \\
      --modes embedded --out /tmp/sc.json --plot /tmp/sc.png                                          # smoke
  .venv/bin/python bench/serving_concurrency.py --modes grpc --policies none prefix --concurrency 4 16 32 \\
      --log-dir /tmp/sc-logs --verbose-gateways --out /tmp/sc.json --plot /tmp/sc.png
      # why the prefix policy chose what it did: /tmp/sc-logs/*-gateway-prefix.log has each change between drafting
      # and plain decoding with both predicted rates
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from environment import cpu_info, demo_parser  # bench/environment.py
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("bench.serving_concurrency")
ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("none", "fixed2", "fixedγ", "prefix")
MODES = ("embedded", "grpc")


def parse_args(argv=None) -> argparse.Namespace:
    p = demo_parser(__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="streams per level")
    p.add_argument("--requests-per-stream", type=int, default=2, help="requests each stream sends in turn...")
    p.add_argument("--min-requests", type=int, default=16, help="...raised at low concurrency to send at least this "
                                                               "many requests per level")
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds per concurrency level; each round runs every policy once, interleaved")
    p.add_argument("--max-tokens", type=int, default=96, help="max_tokens of every request")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (1.0: the API's default, and the one the demo draft's STS calibration "
                        "was fitted at); 0 = greedy, whose texts are then compared across configurations")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="let requests end at EOS (default: ignore_eos, so every request is --max-tokens long and every "
                        "policy does the same amount of work)")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="policies to run")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="deployment modes to run")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the embedded process (`serve --threads`)")
    p.add_argument("--verifier-threads", type=int, default=2,
                   help="torch threads of the gRPC verifier service (`serve-verifier --threads`)")
    p.add_argument("--max-batch", type=int, default=32, help="gateway max_batch (requests decoded together)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a service may take to get ready")
    p.add_argument("--log-dir", default=None,
                   help="keep every service's log in this folder (default: a temporary folder, removed at the end)")
    p.add_argument("--verbose-gateways", action="store_true",
                   help="debug logging in the gateways (`specserve -v`): the prefix policy logs each change of its "
                        "choice between drafting and plain decoding with both predicted rates")
    p.add_argument("--out", default="bench/results/serving_concurrency.json", help="JSON results")
    p.add_argument("--plot", default="bench/results/serving_concurrency.png", help="PNG plot")
    return p.parse_args(argv)


# ---- processes -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Services:
    """Starts `specserve` commands as child processes (a log file each in `log_dir`) and stops them all."""

    def __init__(self, log_dir: Path, verbose: tuple[str, ...] = ()):
        self.log_dir = log_dir
        self.verbose = verbose  # commands started with debug logging (`specserve -v COMMAND`)
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.started = 0

    def start(self, name: str, threads: int, *args: str) -> subprocess.Popen:
        self.started += 1
        logfile = self.log_dir / f"{self.started:02d}-{name}.log"
        command = [sys.executable, "-m", "specserve.cli", *(["-v"] if args[0] in self.verbose else []), *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        log.info("starting %s (%d threads): %s", name, threads, shlex.join(command[2:]))
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=logfile.open("w"), stderr=subprocess.STDOUT)
        self.procs.append((name, proc, logfile))
        return proc

    def check_alive(self) -> None:
        for name, proc, logfile in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}")

    def stop(self, proc: subprocess.Popen | None = None) -> None:
        for entry in [e for e in self.procs if proc is None or e[1] is proc]:
            entry[1].terminate()
            try:
                entry[1].wait(timeout=60)
            except subprocess.TimeoutExpired:
                entry[1].kill()
                entry[1].wait()
            self.procs.remove(entry)


def wait_grpc_ready(services: Services, address: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            services.check_alive()
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.5)
    raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s")


def wait_http_ready(services: Services, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def policy_flags(policy: str) -> list[str]:
    if policy == "fixed2":
        return ["--policy", "fixed", "--fixed-k", "2"]
    if policy == "prefix":
        return ["--policy", "prefix"]
    return ["--policy", "fixed"]  # none (no drafter: k = 0) and fixedγ (k defaults to the block size)


# ---- load ------------------------------------------------------------------------------------------

@dataclass
class Record:
    stream: int
    prompt: int
    tokens: int
    latency_s: float
    ttft_s: float
    text_sha: str


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, args, stream: int,
                      prompt_index: int) -> Record:
    body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "seed": prompt_index, "ignore_eos": not args.stop_at_eos, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, text, tokens = None, [], 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    text.append(choice["text"])
    latency = time.perf_counter() - start
    return Record(stream, prompt_index, tokens, latency, ttft if ttft is not None else latency,
                  hashlib.sha256("".join(text).encode()).hexdigest()[:16])


async def run_level(url: str, model: str, prompts: list[str], args, concurrency: int) -> tuple[float, list[Record]]:
    """N streams, each sending its requests in turn; returns (wall seconds, records)."""
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) \
            as client:
        per_stream = max(args.requests_per_stream, -(-args.min_requests // concurrency))

        async def stream(i: int) -> list[Record]:
            out = []
            for j in range(per_stream):
                index = (i * per_stream + j) % len(prompts)
                out.append(await one_request(client, model, prompts[index], args, i, index))
            return out

        start = time.perf_counter()
        results = await asyncio.gather(*(stream(i) for i in range(concurrency)))
        return time.perf_counter() - start, [r for rs in results for r in rs]


# the gateway's speculation counters (services/gateway/metrics.py) that say what its engine chose during a level
_ENGINE_COUNTERS = {"specserve:spec_decode_num_drafts_total": "drafts",
                    "specserve:spec_decode_verify_batch_size_sum": "request_rounds",
                    "specserve:spec_decode_verify_batch_size_count": "rounds"}


def engine_counters(url: str) -> dict[str, float]:
    """The gateway's verify rounds, request-rounds (a request in a round) and request-rounds that verified drafts,
    read from its /metrics."""
    counters = dict.fromkeys(_ENGINE_COUNTERS.values(), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _ENGINE_COUNTERS:
            counters[_ENGINE_COUNTERS[name]] += float(line.rsplit(" ", 1)[1])
    return counters


def summarize(wall: float, records: list[Record], engine: dict[str, float]) -> dict:
    """A level's figures; `engine`: the gateway's counters over it, for the share of request-rounds that verified
    drafts (what a load-aware policy chose: 0 where it decoded plainly)."""
    tokens = sum(r.tokens for r in records)
    per_user = [r.tokens / r.latency_s for r in records if r.latency_s > 0]
    return {"requests": len(records), "tokens": tokens, "wall_s": wall, "aggregate_tps": tokens / wall,
            "per_user_tps": statistics.mean(per_user), "per_user_tps_median": statistics.median(per_user),
            "ttft_s_median": statistics.median(r.ttft_s for r in records), "rounds": int(engine["rounds"]),
            "drafted_share": engine["drafts"] / engine["request_rounds"] if engine["request_rounds"] else 0.0}


# ---- configurations -------------------------------------------------------------------------------

def measure_gateways(urls: dict[str, str], model: str, prompts: list[str], args, mode: str, bar: tqdm) -> dict:
    """Every level of every policy, the policies interleaved: for each concurrency, `--repeats` rounds that
    each run every policy once (in a rotated order), so slow drifts of the machine hit all policies alike.
    A policy's level pools the records and wall times of its repeats."""
    for url in urls.values():
        asyncio.run(run_level(url, model, prompts, args, 1))  # warm-up: first-call costs stay out of the timings
    results: dict = {policy: {} for policy in urls}
    order = list(urls)
    for n in args.concurrency:
        runs: dict[str, list] = {policy: [] for policy in urls}
        for repeat in range(args.repeats):
            for policy in order[repeat % len(order):] + order[: repeat % len(order)]:
                before = engine_counters(urls[policy])
                wall, records = asyncio.run(run_level(urls[policy], model, prompts, args, n))
                after = engine_counters(urls[policy])
                engine = {k: after[k] - before[k] for k in after}
                runs[policy].append((wall, records, engine))
                s = summarize(wall, records, engine)
                log.info("%s/%s c=%d (repeat %d): %.1f tok/s aggregate, %.1f tok/s per user, %d tokens in %.1fs, "
                         "%d rounds, drafts in %.0f %% of request-rounds", mode, policy, n, repeat + 1,
                         s["aggregate_tps"], s["per_user_tps"], s["tokens"], wall, s["rounds"],
                         100 * s["drafted_share"])
                bar.update(1)
        for policy, done in runs.items():
            records = [r for _, rs, _ in done for r in rs]
            engine = {k: sum(e[k] for _, _, e in done) for k in _ENGINE_COUNTERS.values()}
            results[policy][n] = {"summary": summarize(sum(w for w, _, _ in done), records, engine),
                                  "repeats": [summarize(w, rs, e) for w, rs, e in done],
                                  "records": [{**asdict(r), "repeat": i} for i, (_, rs, _) in enumerate(done)
                                              for r in rs]}
    return results


def run_embedded(args, services: Services, prompts: list[str], bar: tqdm) -> dict:
    urls = {}
    for policy in args.policies:  # all gateways up at once (idle ones sleep), measured interleaved
        port = free_port()
        drafter = "none" if policy == "none" else args.drafter
        services.start(f"serve-{policy}", args.threads, "serve", "--port", str(port), "--target", args.target,
                       "--threads", str(args.threads), "--drafter", drafter, "--max-batch", str(args.max_batch),
                       "--max-waiting", str(2 * args.max_batch), *policy_flags(policy))
        urls[policy] = f"http://127.0.0.1:{port}"
    for url in urls.values():
        wait_http_ready(services, url, args.startup_timeout)
    return measure_gateways(urls, args.target, prompts, args, "embedded", bar)


def run_grpc(args, services: Services, prompts: list[str], taps: list[int], bar: tqdm) -> dict:
    v_port, d_port = free_port(), free_port()
    services.start("verifier", args.verifier_threads, "serve-verifier", "--host", "127.0.0.1", "--port", str(v_port),
                   "--model", args.target, "--tap-layers", ",".join(map(str, taps)),
                   "--threads", str(args.verifier_threads))
    services.start("drafter", 1, "serve-drafter", "--host", "127.0.0.1", "--port", str(d_port), "--drafter",
                   args.drafter, "--target", args.target, "--threads", "1")
    wait_grpc_ready(services, f"127.0.0.1:{v_port}", args.startup_timeout)
    wait_grpc_ready(services, f"127.0.0.1:{d_port}", args.startup_timeout)
    urls = {}
    for policy in args.policies:  # one gateway per policy, all on the same verifier and drafter services
        port = free_port()
        drafter = [] if policy == "none" else ["--drafter-url", f"127.0.0.1:{d_port}"]
        services.start(f"gateway-{policy}", 1, "serve-gateway", "--port", str(port), "--target", args.target,
                       "--verifier-urls", f"127.0.0.1:{v_port}", *drafter, "--max-batch",
                       str(args.max_batch), "--max-waiting", str(2 * args.max_batch), *policy_flags(policy))
        urls[policy] = f"http://127.0.0.1:{port}"
    for url in urls.values():
        wait_http_ready(services, url, args.startup_timeout)
    return measure_gateways(urls, args.target, prompts, args, "grpc", bar)


# ---- report ----------------------------------------------------------------------------------------

def checks(results: dict, args) -> dict:
    def value(mode: str, policy: str, n: int, metric: str) -> float:
        return results[mode][policy][n]["summary"][metric]

    out = {}
    for mode, by_policy in results.items():
        if {"fixed2", "fixedγ", "prefix"} <= by_policy.keys():
            ratios = {n: value(mode, "prefix", n, "aggregate_tps")
                      / max(value(mode, p, n, "aggregate_tps") for p in ("fixed2", "fixedγ")) for n in args.concurrency}
            worst = min(ratios.values())
            out[f"{mode}: prefix / best fixed-k aggregate, worst level >= 0.95"] = {
                "value": worst, "met": worst >= 0.95, "levels": ratios}
        if {"none", "prefix"} <= by_policy.keys():
            ratios = {n: value(mode, "prefix", n, "per_user_tps") / value(mode, "none", n, "per_user_tps")
                      for n in args.concurrency}
            worst = min(ratios.values())
            out[f"{mode}: prefix / no speculation per user, worst level > 1"] = {
                "value": worst, "met": worst > 1.0, "levels": ratios}
    if {"embedded", "grpc"} <= results.keys() and 8 in args.concurrency and "prefix" in args.policies:
        ratio = value("grpc", "prefix", 8, "aggregate_tps") / value("embedded", "prefix", 8, "aggregate_tps")
        out["grpc / embedded aggregate at c=8 (prefix) >= 0.85"] = {"value": ratio, "met": ratio >= 0.85}
    return out


def text_mismatches(results: dict) -> dict:
    """Per (concurrency, prompt): how many configurations disagree with the first one's text."""
    seen: dict[tuple[int, int], str] = {}
    mismatches = []
    for mode, by_policy in results.items():
        for policy, levels in by_policy.items():
            for n, level in levels.items():
                for r in level["records"]:
                    key = (n, r["prompt"])
                    if seen.setdefault(key, r["text_sha"]) != r["text_sha"]:
                        mismatches.append({"mode": mode, "policy": policy, "concurrency": n, "prompt": r["prompt"],
                                           "repeat": r.get("repeat", 0)})
    return {"compared": len(seen), "mismatches": mismatches}


def table(results: dict, args) -> str:
    lines = ["| mode | policy | " + " | ".join(f"c={n}" for n in args.concurrency) + " |",
             "|---|---|" + "---|" * len(args.concurrency)]
    for mode, by_policy in results.items():
        for policy, levels in by_policy.items():
            cells = [f"{levels[n]['summary']['aggregate_tps']:.0f} / {levels[n]['summary']['per_user_tps']:.1f}"
                     for n in args.concurrency]
            lines.append(f"| {mode} | {policy} | " + " | ".join(cells) + " |")
    shares = ["", "share of request-rounds that verified drafts (the load-aware policy's choice)", "",
              "| mode | " + " | ".join(f"c={n}" for n in args.concurrency) + " |",
              "|---|" + "---|" * len(args.concurrency)]
    for mode, by_policy in results.items():
        if "prefix" in by_policy:
            shares.append(f"| {mode} | " + " | ".join(f"{by_policy['prefix'][n]['summary']['drafted_share']:.2f}"
                                                     for n in args.concurrency) + " |")
    return "aggregate tok/s / per-user tok/s\n\n" + "\n".join(lines) + ("\n".join(shares) if len(shares) > 5 else "")


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False, sharey=True)
    for ax, (mode, by_policy) in zip(axes[0], results.items(), strict=True):
        for policy, levels in by_policy.items():
            xs = [levels[n]["summary"]["aggregate_tps"] for n in args.concurrency]
            ys = [levels[n]["summary"]["per_user_tps"] for n in args.concurrency]
            ax.plot(xs, ys, marker="o", label=policy)
            for n, x, y in zip(args.concurrency, xs, ys, strict=True):
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_title(f"{mode} (labels: concurrent streams)")
        ax.set_xlabel("aggregate tokens/s")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("per-user tokens/s")
    fig.suptitle("specserve on the demo model: throughput vs per-user speed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    prompts = [json.loads(line)["turns"][0] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    taps = json.loads((Path(args.drafter.partition(":")[2]) / "config.json").read_text())["target_layer_ids"] \
        if args.drafter.partition(":")[2] else []
    start = time.perf_counter()
    results: dict = {}
    levels = len(args.concurrency) * len(args.policies) * len(args.modes) * args.repeats
    with contextlib.ExitStack() as stack:
        log_dir = Path(args.log_dir) if args.log_dir else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="specserve-bench-")))
        log_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(logging_redirect_tqdm())
        bar = stack.enter_context(tqdm(total=levels, desc="levels", unit="level"))
        services = Services(log_dir, ("serve", "serve-gateway") if args.verbose_gateways else ())
        try:
            for mode in args.modes:
                results[mode] = (run_embedded(args, services, prompts, bar) if mode == "embedded"
                                 else run_grpc(args, services, prompts, taps, bar))
                services.stop()
        finally:
            services.stop()
    agreement = text_mismatches(results) if args.temperature == 0 else {"compared": 0, "mismatches": [],
                                                                        "note": "sampled: texts not compared"}
    report = {"command": shlex.join([sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]),
              "args": vars(args), "environment": {**cpu_info(), "loadavg_1min": os.getloadavg()[0]},
              "wall_s": time.perf_counter() - start, "checks": checks(results, args),
              "text_agreement": agreement, "results": results}
    report["all_targets_met"] = all(c["met"] for c in report["checks"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    plot(results, args, Path(args.plot))
    print(table(results, args))
    print()
    for name, check in report["checks"].items():
        print(f"{'met ' if check['met'] else 'MISSED'} {name}: {check['value']:.3f}")
    print(f"texts: {agreement['compared']} (concurrency, prompt) pairs, {len(agreement['mismatches'])} mismatching")
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
