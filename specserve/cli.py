"""`specserve` command line. Each subcommand is a small function; errors a user can fix exit with code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from pydantic import ValidationError

from specserve.data.cli import add_data_parser
from specserve.errors import SpecServeError
from specserve.eval.cli import add_calibrate_parser, add_eval_parser
from specserve.training.cli import add_train_parser

log = logging.getLogger("specserve")


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate text from a prompt with speculative decoding",
        description="Generate from one prompt with the target model, speculating with the chosen drafter. "
                    "Greedy output is token-for-token the target's own greedy decoding; sampled output is "
                    "distributed exactly as the target's. Prints the text, then the decoding statistics.")
    p.add_argument("--target", required=True, help="target causal LM: a local folder or a hub id")
    p.add_argument("--drafter", default="none",
                   help="none | ngram[:BLOCK] (prompt lookup) | model:PATH (a small LM sharing the tokenizer) | "
                        "dspark:PATH | dflash:PATH | eagle3:PATH (DeepSpec-format drafts) | auto:PATH (kind read "
                        "from the checkpoint's config.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (tokenised with the target's tokenizer)")
    src.add_argument("--prompt-ids", help="comma-separated token ids, for models without a tokenizer")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as one user turn with the chat template (thinking disabled)")
    p.add_argument("--max-tokens", type=int, default=128, help="maximum new tokens (> 0; default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed of the counter-based RNG (reproducible sampling)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")
    p.add_argument("--block-size", type=int, default=None, help="draft tokens per round (γ) for the drafter")
    p.add_argument("--dtype", default="float32", help="float32 (CPU default) | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text + statistics")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from specserve.decoding.budget import FixedK
    from specserve.decoding.sampling import SamplingParams
    from specserve.drafters.registry import build_drafter
    from specserve.engine.engine import SpecEngine
    from specserve.engine.verifier import LocalVerifier
    from specserve.target.model import CausalLM

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            max_tokens=args.max_tokens, stop=tuple(args.stop), ignore_eos=args.ignore_eos)
    t0 = time.perf_counter()
    target = CausalLM.from_pretrained(args.target, dtype=args.dtype, device=args.device)
    drafter = build_drafter(args.drafter, target, args.block_size)
    log.info("loaded %s (%d layers, vocab %d) and drafter %s in %.1fs", args.target, target.num_layers,
             target.vocab_size, args.drafter, time.perf_counter() - t0)
    prompt_ids = _prompt_ids(args, target.tokenizer)
    verifier = LocalVerifier(target, tap_layers=drafter.target_layer_ids if drafter else ())
    policy = FixedK(args.block_size) if args.block_size and drafter is not None else None
    engine = SpecEngine(verifier, drafter, policy=policy, tokenizer=target.tokenizer)
    stream = not args.json and target.tokenizer is not None
    on_output = (lambda out: print(out.new_text, end="", flush=True)) if stream else None
    request = engine.add_request(prompt_ids, params, on_output=on_output)
    while engine.has_unfinished():
        engine.step()
    stats = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(request.output_ids),
             "finish_reason": request.finish_reason, **request.stats.as_dict(len(request.output_ids))}
    if args.json:
        print(json.dumps({"text": request.text, "token_ids": request.output_ids, "stats": stats}))
    else:
        if not stream:
            print(" ".join(map(str, request.output_ids)))
        print("\n---")
        for key, value in stats.items():
            print(f"{key}: {round(value, 4) if isinstance(value, float) else value}")
    return 0


def _prompt_ids(args, tokenizer) -> list[int]:
    from specserve.errors import InvalidRequestError

    if args.prompt_ids is not None:
        try:
            return [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise InvalidRequestError("prompt-ids",
                                      f"expected comma-separated integers, got {args.prompt_ids!r}") from None
    if tokenizer is None:
        raise InvalidRequestError("prompt", "the target has no tokenizer; pass --prompt-ids instead")
    if args.chat:
        messages = [{"role": "user", "content": args.prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  enable_thinking=False, return_dict=False))
    return tokenizer(args.prompt)["input_ids"]


def _add_drafter(sub) -> None:
    p = sub.add_parser("drafter", help="inspect draft checkpoints")
    cmds = p.add_subparsers(dest="drafter_command", required=True, metavar="ACTION")
    c = cmds.add_parser("check", help="lint a draft checkpoint against a target without loading weights",
                        description="Check that a DSpark/DFlash/Eagle3 checkpoint fits a target: vocab_size, "
                                    "hidden_size, num_target_layers, target_layer_ids, mask_token_id, and every "
                                    "weight key and shape. Exits 2 naming each mismatch.")
    c.add_argument("--draft", required=True, help="draft checkpoint folder or hub id")
    c.add_argument("--target", required=True, help="target model folder or hub id (only its config is read)")
    c.set_defaults(func=cmd_drafter_check)


def cmd_drafter_check(args) -> int:
    from specserve.drafters.factory import check_drafter

    cfg = check_drafter(args.draft, args.target)
    print(f"ok: {cfg.architecture} ({cfg.kind}), {cfg.num_layers} layer(s), taps {list(cfg.target_layer_ids)}, "
          f"max block {cfg.max_block} fits {args.target}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the bundled demo models",
                       description="Reproducible recipe for the demo bundle (no network needed).")
    demo = p.add_subparsers(dest="demo_command", required=True, metavar="STEP")
    t = demo.add_parser("build-target", help="train the BPE tokenizer and the Qwen3 demo target",
                        description="Train a byte-level BPE tokenizer and a small Qwen3-architecture target on "
                                    "the Python standard library installed on this machine; save both (bf16 "
                                    "safetensors) with build.json recording the recipe and held-out perplexity.")
    t.add_argument("--out", default="models/demo/target", help="output folder (default models/demo/target)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    t.add_argument("--seed", type=int, default=None, help="seed (default: the recipe's)")
    t.set_defaults(func=cmd_demo_build_target)


def cmd_demo_build_target(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    from specserve.demo.pretrain import TargetRecipe, pretrain_target

    recipe = TargetRecipe()
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    facts = pretrain_target(Path(args.out), replace(recipe, **overrides))
    print(json.dumps({k: facts[k] for k in ("parameters", "heldout_perplexity", "train_seconds")}))
    return 0


_GATEWAY_FIELDS = ("host", "port", "target", "served_model_name", "drafter", "block_size", "policy", "fixed_k",
                   "threshold", "max_batch", "max_waiting", "api_keys", "jobs_api_keys", "dtype", "device",
                   "verifier_urls", "drafter_url", "threads", "trainer_url", "trainer", "trainer_state_dir")


def _add_serve(sub) -> None:
    common = dict(description="Serve the OpenAI-compatible REST API (/v1/completions, /v1/chat/completions, "
                              "/v1/models, /health, /ready, /metrics). Every flag can also be set as an "
                              "environment variable SPECSERVE_<FLAG> (e.g. SPECSERVE_PORT=8000); flags win.")
    serve = sub.add_parser("serve", help="run gateway + drafter + verifier in one process (embedded mode)", **common)
    gateway = sub.add_parser("serve-gateway", help="run the gateway over remote verifier/drafter services",
                             **common)
    for p in (serve, gateway):
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000)")
        p.add_argument("--target", help="target model folder or hub id (default: the bundled demo target); in "
                                        "scale-out mode only its tokenizer is loaded")
        p.add_argument("--served-model-name", help="model name clients send (default: the target's path)")
        p.add_argument("--policy", choices=["fixed", "threshold", "prefix"],
                       help="verification budget: fixed-k, static confidence threshold, or the hardware-aware "
                            "prefix scheduler (Algorithm 1; the default)")
        p.add_argument("--fixed-k", type=int, help="k of the fixed policy")
        p.add_argument("--threshold", type=float, help="cumulative-confidence threshold of the threshold policy")
        p.add_argument("--max-batch", type=int, help="requests decoded together")
        p.add_argument("--max-waiting", type=int, help="requests admitted (running + queued) before answering 429")
        p.add_argument("--api-keys", help="comma-separated API keys; none = open access")
        p.add_argument("--jobs-api-keys", help="comma-separated API keys of /v1/jobs* (training jobs) instead of "
                                               "--api-keys, which then get 403 there; none = --api-keys")
        p.add_argument("--trainer-url", help="trainer API (http://host:8100) to forward /v1/jobs* to (its key: "
                                             "SPECSERVE_TRAINER_CLIENT_KEY); unset = no training jobs here")
        p.set_defaults(func=cmd_serve)
    serve.add_argument("--drafter", help="drafter spec, as for `generate` (default: the bundled demo DSpark draft, "
                                         "dspark:models/demo/dspark)")
    serve.add_argument("--block-size", type=int, help="draft tokens per round (γ)")
    serve.add_argument("--dtype", help="float32 | bfloat16 | float16")
    serve.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    serve.add_argument("--threads", type=int, help="torch threads of the engine (default: OMP_NUM_THREADS, else "
                                                   "usable cores - 1, at least 1: the HTTP event loop keeps a core)")
    serve.add_argument("--trainer", action="store_true", default=None,
                       help="also serve training jobs (/v1/jobs: train, regenerate, eval) with a trainer worker child "
                            "process, on the trainer's embedded default (SQLite store and broker)")
    serve.add_argument("--trainer-state-dir", help="job folders of --trainer (default ./trainer-state)")
    gateway.add_argument("--verifier-urls", required=True, help="comma-separated verifier replicas (host:port)")
    gateway.add_argument("--drafter-url", help="drafter service (host:port); unset = no speculation")

    verifier = sub.add_parser("serve-verifier", help="run the gRPC verifier service around the target",
                              description="Serve the target over gRPC (specserve.v1.Verifier) with health and "
                                          "reflection; profiles SPS(B) at start-up. Environment: "
                                          "SPECSERVE_VERIFIER_<FIELD>; flags win.")
    verifier.add_argument("--host", help="bind address (default 0.0.0.0)")
    verifier.add_argument("--port", type=int, help="port (default 50051)")
    verifier.add_argument("--model", help="target model folder or hub id")
    verifier.add_argument("--tap-layers", help="comma-separated target layers returned as taps (the drafter's)")
    verifier.add_argument("--dtype", help="float32 | bfloat16 | float16")
    verifier.add_argument("--device", help="torch device")
    verifier.add_argument("--threads", type=int,
                        help="torch threads (default: OMP_NUM_THREADS, else one per usable core)")
    verifier.set_defaults(func=cmd_serve_verifier)
    drafter = sub.add_parser("serve-drafter", help="run the gRPC drafter service",
                             description="Serve a drafter over gRPC (specserve.v1.Drafter) with health and "
                                         "reflection. Environment: SPECSERVE_DRAFTER_<FIELD>; flags win.")
    drafter.add_argument("--host", help="bind address (default 0.0.0.0)")
    drafter.add_argument("--port", type=int, help="port (default 50052)")
    drafter.add_argument("--drafter", help="drafter spec, as for `generate`")
    drafter.add_argument("--block-size", type=int, help="draft tokens per round (γ)")
    drafter.add_argument("--target", help="target folder or hub id whose embedding and LM head fill a draft saved "
                                          "without them (only those two tensors are read)")
    drafter.add_argument("--dtype", help="float32 | bfloat16 | float16")
    drafter.add_argument("--device", help="torch device")
    drafter.add_argument("--threads", type=int,
                        help="torch threads (default: OMP_NUM_THREADS, else one per usable core)")
    drafter.set_defaults(func=cmd_serve_drafter)


_TRAINER_FIELDS = ("host", "port", "state_dir", "database_url", "broker_url", "api_keys", "queue", "lease_s",
                   "heartbeat_s")


def _add_trainer(sub) -> None:
    env = ("Every flag can also be set as SPECSERVE_TRAINER_<FLAG> (e.g. SPECSERVE_TRAINER_BROKER_URL); flags win. "
           "Default: no server needed (SQLite job store and SQLite Celery broker under --state-dir); scale-out: "
           "PostgreSQL (--database-url postgresql+psycopg://...) and Redis (--broker-url redis://...). The API "
           "and its workers must share the settings and --state-dir.")
    api = sub.add_parser("serve-trainer", help="run the training jobs API (submit, follow, cancel training runs)",
                         description="Serve the jobs API: POST /v1/jobs with a `specserve train` config as JSON, "
                                     "GET /v1/jobs[/{id}[/log]], POST /v1/jobs/{id}/cancel, /health, /ready, "
                                     "/metrics. Jobs run on `specserve trainer-worker` processes. " + env)
    worker = sub.add_parser("trainer-worker", help="run a Celery worker that runs training jobs, one at a time",
                            description="Run queued training jobs, one at a time, as `specserve train` child "
                                        "processes (torchrun when a job asks for nproc > 1). A job whose worker "
                                        "dies is queued again after --lease-s and resumes from its latest "
                                        "checkpoint; SIGTERM hands the running job back to the queue. " + env)
    for p in (api, worker):
        p.add_argument("--state-dir", help="job folders (config, log, checkpoints) and the default SQLite files "
                                           "(default ./trainer-state)")
        p.add_argument("--database-url", help="SQLAlchemy URL of the job store (default: SQLite in --state-dir)")
        p.add_argument("--broker-url", help="Celery broker URL (default: SQLite in --state-dir)")
        p.add_argument("--queue", help="Celery queue (default specserve-training)")
        p.add_argument("--lease-s", type=float, help="a running job silent this long is queued again (default 60)")
        p.add_argument("--heartbeat-s", type=float, help="how often a worker reports its running job (default 5)")
    api.add_argument("--host", help="bind address (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default 8100)")
    api.add_argument("--api-keys", help="comma-separated API keys; none = open access")
    api.set_defaults(func=cmd_serve_trainer)
    worker.set_defaults(func=cmd_trainer_worker)


def _need_trainer_extra() -> None:
    try:
        import celery  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise SpecServeError(f"the trainer service needs the `trainer` extra: pip install 'specserve[trainer]' "
                             f"({exc.name} is not installed)") from None


def cmd_serve_trainer(args) -> int:
    _need_trainer_extra()
    from services.trainer.app import serve
    from services.trainer.settings import TrainerSettings

    serve(TrainerSettings(**_given(args, _TRAINER_FIELDS)))
    return 0


def cmd_trainer_worker(args) -> int:
    _need_trainer_extra()
    from services.trainer.settings import TrainerSettings
    from services.trainer.worker import run_worker

    run_worker(TrainerSettings(**_given(args, _TRAINER_FIELDS)), "DEBUG" if args.verbose else "INFO")
    return 0


def _given(args, fields) -> dict:
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def cmd_serve(args) -> int:
    import asyncio

    from services.gateway.main import serve
    from services.gateway.settings import GatewaySettings

    if getattr(args, "trainer", None):
        _need_trainer_extra()
    asyncio.run(serve(GatewaySettings(**_given(args, _GATEWAY_FIELDS))))
    return 0


def cmd_serve_verifier(args) -> int:
    import asyncio

    from services.verifier.main import serve
    from services.verifier.settings import VerifierSettings

    given = _given(args, ("host", "port", "model", "dtype", "device", "threads"))
    if args.tap_layers:
        given["tap_layers"] = tuple(int(t) for t in args.tap_layers.split(","))
    asyncio.run(serve(VerifierSettings(**given)))
    return 0


def cmd_serve_drafter(args) -> int:
    import asyncio

    from services.drafter.main import serve
    from services.drafter.settings import DrafterSettings

    asyncio.run(serve(DrafterSettings(**_given(args, ("host", "port", "drafter", "block_size", "target", "dtype",
                                                                       "device", "threads")))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specserve", description="Lossless speculative decoding: "
                                     "train draft models, evaluate them, serve a target faster with them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_serve(sub)
    _add_drafter(sub)
    add_data_parser(sub)
    add_train_parser(sub)
    _add_trainer(sub)
    add_eval_parser(sub)
    add_calibrate_parser(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except (SpecServeError, ValidationError) as exc:  # ValidationError: a service settings flag out of range
        print(f"specserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
