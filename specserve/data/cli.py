"""`specserve data regenerate | cache | estimate`: the data pipeline's command line.

Wire it into `specserve/cli.py` with `add_data_parser(sub)` in `build_parser`; each command is a
`cmd_data_*(args) -> int` function, and errors a user can fix are `SpecServeError`s (exit code 2).
"""

from __future__ import annotations

import hashlib
import logging

log = logging.getLogger("specserve.data")

_SPLIT_HELP = ("which rows to use: all (default), train or heldout; the split is a hash of each row's prompt "
               "(system + user turns), so it is the same for a prompt set and its regenerated copy")


def _add_target_args(p, taps: bool = False) -> None:
    p.add_argument("--target", required=True, help="target causal LM: a local folder or a hub id (its tokenizer "
                                                   "and chat template are used too)")
    p.add_argument("--dtype", default="float32", help="target dtype: float32 (default, CPU) | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="torch device for the target, e.g. cpu (default) or cuda:0")
    if taps:
        p.add_argument("--layers", default=None,
                       help="comma-separated target_layer_ids to tap (0-based decoder layers, -1 = embeddings); "
                            "default: 5 spread evenly over [1, n-3] (Qwen3-4B: 1,9,17,25,33)")


def _add_rows_args(p) -> None:
    p.add_argument("--split", default="all", choices=("all", "train", "heldout"), help=_SPLIT_HELP)
    p.add_argument("--heldout-percent", type=float, default=5.0,
                   help="share of rows in the held-out split, in percent (default 5, as DeepSpec)")
    p.add_argument("--on-error", default="stop", choices=("stop", "skip"),
                   help="a malformed row: stop with its file:line (default), or skip it, log it and count it")
    p.add_argument("--thinking", action="store_true",
                   help="render the chat template with enable_thinking=True (default: thinking off)")


def add_data_parser(subparsers) -> None:
    """Add `data` with its `regenerate`, `cache` and `estimate` subcommands to the top-level subparsers."""
    p = subparsers.add_parser("data", help="prepare training data: regenerate answers, cache target features",
                              description="The draft-training data pipeline: regenerate a prompt set's answers "
                                          "with the target, then (optionally) cache the target's features.")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="STEP")
    _add_regenerate(sub)
    _add_cache(sub)
    _add_estimate(sub)


def _add_regenerate(sub) -> None:
    p = sub.add_parser(
        "regenerate", help="answer a prompt set with the target (resumable, in input order)",
        description="Regenerate every row's assistant answers with the target through specserve's engine "
                    "(speculative when --drafter is given), turn by turn for multi-turn rows. Input: JSONL of "
                    '{"turns": [...]} or {"conversations": [{"role", "content"}]}. Output: JSONL in input order '
                    "with the conversations, finish reasons and token counts. The run is resumable: rerun the "
                    "same command after a crash or kill and it continues; the result is identical to an "
                    "uninterrupted run (seeds depend on the row, not on batching).")
    _add_target_args(p)
    p.add_argument("--input", required=True, help="prompt set (JSONL)")
    p.add_argument("--out", required=True, help="output JSONL; OUT.progress.json records what is durable")
    p.add_argument("--drafter", default="none",
                   help="none (default) | ngram[:BLOCK] | model:PATH: speculate while regenerating (lossless: the "
                        "answers follow the target's distribution)")
    p.add_argument("--block-size", type=int, default=None,
                   help="draft tokens per round for the drafter (default: the drafter's)")
    _add_rows_args(p)
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N rows of the split, for a trial run (default: all)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature, 0 = greedy (default 0.7, as DeepSpec)")
    p.add_argument("--top-p", type=float, default=0.8, help="nucleus mass in (0, 1] (default 0.8)")
    p.add_argument("--top-k", type=int, default=20, help="keep the k most likely tokens, 0 = off (default 20)")
    p.add_argument("--max-tokens", type=int, default=4096, help="most new tokens per assistant answer (default 4096)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; each (row, turn) derives its own from it (default 0)")
    p.add_argument("--max-batch", type=int, default=32, help="engine batch: rows decoded concurrently (default 32)")
    p.add_argument("--sync-every", type=int, default=16,
                   help="rows between fsyncs of the output; a crash redoes at most this many (default 16)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing output instead of resuming it")
    p.set_defaults(func=cmd_data_regenerate)


def _add_cache(sub) -> None:
    p = sub.add_parser(
        "cache", help="precompute the target's features for training (sharded, mmap-able)",
        description="Tokenise a regenerated data set with the target's chat template (loss mask on assistant "
                    "content + end-of-turn), run the target over every row and store input_ids, loss_mask, the "
                    "taps and (optionally) the final-norm hidden state. Run `specserve data estimate` first to "
                    "see the size of each storage mode. Training can instead run the target online (no cache).")
    _add_target_args(p, taps=True)
    p.add_argument("--data", required=True, help="regenerated conversations (JSONL, the output of `regenerate`)")
    p.add_argument("--out", required=True, help="cache folder (created; must be empty unless --overwrite)")
    p.add_argument("--taps-dtype", default="fp8", choices=("fp32", "bf16", "fp8"),
                   help="storage of the taps: fp8 = float8_e4m3fn with a scale per token and layer (<= 6.25%% "
                        "relative error; default), bf16 (exact for a bf16 target), fp32 (exact)")
    p.add_argument("--final", default="bf16", choices=("fp32", "bf16", "fp8", "none"),
                   help="storage of the final-norm hidden state (for p_t in the L1/confidence/TTT losses); "
                        "none for CE-only (DFlash) training (default bf16)")
    p.add_argument("--max-length", type=int, default=4096, help="truncate sequences to this many tokens (default 4096)")
    _add_rows_args(p)
    p.add_argument("--shard-mb", type=int, default=1024, help="approximate shard size in MiB (default 1024)")
    p.add_argument("--name", default=None, help="target name recorded in the manifest (default: --target)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")
    p.set_defaults(func=cmd_data_cache)


def _add_estimate(sub) -> None:
    p = sub.add_parser(
        "estimate", help="print the cache size of every storage mode before building it",
        description="Print bytes per token and total size of the feature cache for every storage mode, next to "
                    "DeepSpec's layout (6 + 2*H*(m+1) B/token), for a target shape and a token count. Reads only "
                    "the target's config (and tokenizer with --data); writes nothing.")
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument("--target", help="target folder or hub id (only config.json is read, plus the tokenizer "
                                        "when --data is given)")
    shape.add_argument("--hidden-size", type=int, help="target hidden size H, instead of --target "
                                                       "(Qwen3-4B: 2560)")
    p.add_argument("--num-taps", type=int, default=None,
                   help="tapped layers m (default: the default tap set's size for --target, else 5; ignored when "
                        "--layers is given)")
    p.add_argument("--layers", default=None, help="comma-separated target_layer_ids (their count is m)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--tokens", type=int, help="number of tokens in the data set")
    size.add_argument("--data", help="conversations JSONL to count (tokenised with --target's chat template)")
    p.add_argument("--max-length", type=int, default=4096,
                   help="truncation length used when counting --data (default 4096)")
    p.add_argument("--answer-tokens", type=int, default=0,
                   help="assumed tokens per not-yet-answered user turn, for a prompt set before regeneration "
                        "(default 0)")
    p.add_argument("--on-error", default="stop", choices=("stop", "skip"), help="a malformed row in --data: stop "
                                                                                 "with file:line, or skip it")
    p.set_defaults(func=cmd_data_estimate)


# ---- commands -------------------------------------------------------------------------------------
def cmd_data_regenerate(args) -> int:
    """`specserve data regenerate`: answer a prompt set with the target, resumably, in input order."""
    from specserve.data.fingerprint import config_hash, weights_hash
    from specserve.data.prompts import read_prompts, select_split
    from specserve.data.regenerate import RegenConfig, Regenerator
    from specserve.drafters.registry import build_drafter
    from specserve.engine.engine import SpecEngine
    from specserve.engine.verifier import LocalVerifier
    from specserve.target.model import CausalLM

    config = RegenConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
                         seed=args.seed, enable_thinking=args.thinking, sync_every=args.sync_every)
    if args.limit is not None:
        at_least(args.limit, 0, "limit")
    prompts = read_prompts(existing_file(args.input, "input"), args.on_error)
    rows = select_split(prompts.rows, args.split, args.heldout_percent)[: args.limit]
    log.info("%s: %d rows in split %s%s", args.input, len(rows), args.split,
             f" (first {args.limit})" if args.limit is not None else "")
    target = CausalLM.from_pretrained(args.target, dtype=args.dtype, device=args.device)
    drafter = build_drafter(args.drafter, target, args.block_size)
    verifier = LocalVerifier(target, tap_layers=drafter.target_layer_ids if drafter else ())
    engine = SpecEngine(verifier, drafter, tokenizer=target.tokenizer, max_batch=args.max_batch)
    identity = {"input_sha256": file_sha256(args.input), "split": args.split,
                "heldout_percent": args.heldout_percent, "limit": args.limit, "on_error": args.on_error,
                "target_config": config_hash(target.config), "target_weights": weights_hash(target.model),
                "drafter": args.drafter, "block_size": args.block_size}
    summary = Regenerator(engine, target.tokenizer, config).run(rows, args.out, identity, overwrite=args.overwrite)
    print(f"{args.out}: {summary.rows_resumed + summary.rows_written}/{summary.rows_total} rows "
          f"({summary.rows_written} this run), {summary.completion_tokens} tokens, tau {summary.tau:.2f}")
    return 0


def cmd_data_cache(args) -> int:
    """`specserve data cache`: tokenise a regenerated data set and write the target-feature cache."""
    from specserve.data.cache_writer import build_cache
    from specserve.data.features import check_tap_layers, default_tap_layers
    from specserve.data.prompts import read_prompts, select_split
    from specserve.data.storage import StorageMode
    from specserve.data.tokenization import ChatTokenizer, tokenize_rows
    from specserve.errors import ModelLoadError
    from specserve.target.model import CausalLM

    mode = StorageMode(args.taps_dtype, args.final)
    at_least(args.shard_mb, 1, "shard-mb")
    prompts = read_prompts(existing_file(args.data, "data"), args.on_error)
    rows = select_split(prompts.rows, args.split, args.heldout_percent)
    target = CausalLM.from_pretrained(args.target, dtype=args.dtype, device=args.device)
    if target.tokenizer is None:
        raise ModelLoadError(f"{args.target} has no tokenizer; the data pipeline needs its chat template")
    layers = check_tap_layers(parse_layers(args.layers) if args.layers else default_tap_layers(target.num_layers),
                              target.num_layers)
    chat = ChatTokenizer(target.tokenizer, args.max_length, args.thinking)
    skipped: list = []
    tokenized = tokenize_rows(rows, chat, args.data, args.on_error, skipped)
    log.info("caching %d rows of %s with taps %s, storage %s, %d B/token", len(rows), args.data, list(layers),
             mode.name, mode.bytes_per_token(target.hidden_size, len(layers)))
    source = {"data": args.data, "data_sha256": file_sha256(args.data), "split": args.split,
              "heldout_percent": args.heldout_percent, "max_length": args.max_length,
              "enable_thinking": args.thinking}
    manifest = build_cache(target, tokenized, args.out, layers, mode, name=args.name or args.target,
                           shard_bytes=args.shard_mb << 20, overwrite=args.overwrite, total=len(rows), source=source)
    if skipped:
        log.warning("%d rows skipped (template mismatch)", len(skipped))
    print(f"{args.out}: {manifest['rows']} rows, {manifest['tokens']} tokens, {manifest['bytes_per_token']} B/token "
          f"({mode.name})")
    return 0


def cmd_data_estimate(args) -> int:
    """`specserve data estimate`: print the cache size of every storage mode; writes nothing."""
    from specserve.data.estimate import estimate_modes, format_estimate
    from specserve.data.features import DEFAULT_NUM_TAPS, default_tap_layers
    from specserve.errors import InvalidRequestError

    hidden, num_layers = args.hidden_size, None
    for value, option in ((args.hidden_size, "hidden-size"), (args.num_taps, "num-taps"), (args.tokens, "tokens")):
        if value is not None:
            at_least(value, 1 if option != "tokens" else 0, option)
    if args.target:
        from transformers import AutoConfig

        from specserve.errors import ModelLoadError

        try:
            config = AutoConfig.from_pretrained(args.target).get_text_config()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read a model config from {args.target!r}: {exc}") from exc
        hidden, num_layers = config.hidden_size, config.num_hidden_layers
    if args.data and not args.target:
        raise InvalidRequestError("data", "counting --data needs --target (its tokenizer and chat template)")
    if args.layers:
        num_taps = len(parse_layers(args.layers))
    elif args.num_taps is not None:
        num_taps = args.num_taps
    else:
        num_taps = len(default_tap_layers(num_layers)) if num_layers is not None else DEFAULT_NUM_TAPS
    tokens = args.tokens if args.tokens is not None else count_tokens(args)
    print(format_estimate(estimate_modes(hidden, num_taps, tokens), hidden, num_taps, tokens))
    return 0


# ---- helpers ----------------------------------------------------------------------------------------
def count_tokens(args) -> int:
    """Tokens of `args.data` as training would see them (chat template, truncation), plus assumed answers."""
    from transformers import AutoTokenizer

    from specserve.data.prompts import read_prompts
    from specserve.data.tokenization import ChatTokenizer

    chat = ChatTokenizer(AutoTokenizer.from_pretrained(args.target), max_length=args.max_length)
    total = 0
    for row in read_prompts(existing_file(args.data, "data"), args.on_error).rows:
        answers = sum(m.role == "assistant" for m in row.messages)
        unanswered = max(0, len(row.user_turns) - answers)
        total += min(args.max_length, len(chat(row)) + unanswered * args.answer_tokens)
    return total


def parse_layers(text: str) -> tuple[int, ...]:
    """'1,9,17' -> (1, 9, 17), with an error that names the option."""
    from specserve.errors import InvalidRequestError

    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise InvalidRequestError("layers", f"expected comma-separated integers, got {text!r}") from None


def at_least(value: int, low: int, option: str) -> None:
    """Refuse `value < low`, naming the option."""
    from specserve.errors import InvalidRequestError

    if value < low:
        raise InvalidRequestError(option, f"must be >= {low}, got {value}")


def existing_file(path: str, option: str) -> str:
    """`path` if it is a file; otherwise an error naming the option."""
    import os

    from specserve.errors import InvalidRequestError

    if not os.path.isfile(path):
        raise InvalidRequestError(option, f"{path} is not a file")
    return path


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (the identity of a regeneration input)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
