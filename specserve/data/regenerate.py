"""Regenerate a prompt set's answers with the target, through specserve's own (speculative) engine.

Rows are decoded concurrently with continuous batching, turn by turn: answer t of a row is requested
once answer t-1 is known, with every earlier turn (the regenerated answers included) in context.
Each request's seed is a hash of (base seed, row index, turn), and the engine's randomness is keyed by
seed and position only, so a row's answers do not depend on which rows share its batch: a resumed run
writes the same rows as an uninterrupted one. Finished rows wait in memory until every earlier row is
written (`OrderedJsonlWriter`); admission stops while more than `window` finished rows wait.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from specserve.data.errors import RegenerationError
from specserve.data.ordered_output import OrderedJsonlWriter
from specserve.data.prompts import PromptRow
from specserve.decoding.sampling import SamplingParams
from specserve.engine.engine import SpecEngine
from specserve.engine.request import Request
from specserve.errors import ContextLengthError, InvalidRequestError, ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegenConfig:
    """Sampling and scheduling of a regeneration run. The defaults are DeepSpec's (non-thinking mode)."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_tokens: int = 4096  # per assistant turn
    seed: int = 0  # base seed; each (row, turn) derives its own
    enable_thinking: bool = False  # passed to the chat template
    rows_in_flight: int = 0  # rows decoded concurrently; 0 = the engine's max_batch
    window: int = 0  # most finished rows held for in-order writing; 0 = 4 x rows_in_flight
    sync_every: int = 16  # rows between fsyncs of the output (a crash redoes at most this many)

    def __post_init__(self):
        self.sampling(0, 0)  # validates temperature, top_p, top_k, max_tokens with SamplingParams' messages
        for name in ("rows_in_flight", "window"):
            if getattr(self, name) < 0:
                raise InvalidRequestError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.sync_every < 1:
            raise InvalidRequestError("sync_every", f"must be >= 1, got {self.sync_every}")

    def sampling(self, row_index: int, turn: int) -> SamplingParams:
        """The sampling parameters of one (row, turn), seeded independently of batching."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_tokens=self.max_tokens, seed=row_seed(self.seed, row_index, turn))

    def identity(self) -> dict:
        """The settings the output depends on (scheduling settings do not change it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("rows_in_flight", "window", "sync_every")}


def row_seed(base_seed: int, row_index: int, turn: int) -> int:
    """A 63-bit seed for one (row, turn), a hash of the base seed and the position."""
    digest = hashlib.blake2b(f"{base_seed}:{row_index}:{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class RegenSummary:
    """What a run did: rows written (this run and before), turns, tokens, speculation and time."""

    rows_total: int
    rows_resumed: int = 0
    rows_written: int = 0
    turns: int = 0
    completion_tokens: int = 0
    rounds: int = 0
    truncated_turns: int = 0  # answers stopped by max_tokens or the context window
    seconds: float = 0.0

    @property
    def tau(self) -> float:
        """Tokens per target forward (1.0 without a drafter)."""
        return self.completion_tokens / self.rounds if self.rounds else 0.0


@dataclass
class _Row:
    pos: int  # position in the row list (= output order)
    row: PromptRow
    answers: list[str] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def messages(self) -> list[dict]:
        """The conversation so far, ending with the next user turn when one is left."""
        out = [{"role": "system", "content": self.row.system}] if self.row.system is not None else []
        for t, user in enumerate(self.row.user_turns[: len(self.answers) + 1]):
            out.append({"role": "user", "content": user})
            if t < len(self.answers):
                out.append({"role": "assistant", "content": self.answers[t]})
        return out

    def output(self) -> dict:
        """The output JSONL row."""
        convo = self.messages()
        if convo[-1]["role"] == "user" and self.answers:  # a turn that did not fit the context has no answer
            convo.pop()  # (a row whose first turn did not fit keeps it: a valid row that carries no loss)
        return {"index": self.row.index, "conversations": convo, "finish_reasons": self.finish,
                "completion_tokens": self.tokens}


class Regenerator:
    """Drives a `SpecEngine` over a prompt set and writes the answered rows in order."""

    def __init__(self, engine: SpecEngine, tokenizer, config: RegenConfig | None = None):
        if tokenizer is None:
            raise ModelLoadError("regeneration needs the target's tokenizer (for its chat template)")
        self.engine, self.tokenizer = engine, tokenizer
        self.config = config or RegenConfig()
        self.stop_ids = frozenset(engine.eos_token_ids)

    def run(self, rows: Sequence[PromptRow], out: str, identity: dict, overwrite: bool = False,
            progress: bool = True) -> RegenSummary:
        """Answer every row of `rows` into `out` (JSONL), resuming a previous run of the same identity."""
        cfg = self.config
        in_flight = cfg.rows_in_flight or self.engine.max_batch
        window = cfg.window or 4 * in_flight
        identity = {**identity, **cfg.identity(), "rows": len(rows)}
        summary = RegenSummary(rows_total=len(rows))
        t0 = time.perf_counter()
        with OrderedJsonlWriter(out, identity, cfg.sync_every, overwrite) as writer:
            summary.rows_resumed = writer.rows_done
            if writer.complete:
                log.info("%s is already complete (%d rows); nothing to do", out, writer.rows_done)
                return summary
            bar = tqdm(total=len(rows), initial=writer.rows_done, unit="row", desc="regenerate", disable=not progress)
            active: dict[str, tuple[_Row, Request]] = {}
            done: dict[int, dict] = {}
            next_row = writer.rows_done
            while writer.rows_done < len(rows):
                while (next_row < len(rows) and len(active) < in_flight
                       and next_row < writer.rows_done + window):
                    self._next_turn(_Row(next_row, rows[next_row]), active, done, summary)
                    next_row += 1
                if self.engine.has_unfinished():
                    self.engine.step()
                for rid in [rid for rid, (_, req) in active.items() if req.finished]:
                    state, request = active.pop(rid)
                    self._record(state, request, summary)
                    self._next_turn(state, active, done, summary)
                while writer.rows_done in done:
                    writer.write(done.pop(writer.rows_done))
                    summary.rows_written += 1
                    bar.update(1)
            writer.finish()
            bar.close()
        summary.seconds = time.perf_counter() - t0
        log.info("regenerated %d rows (%d resumed) into %s: %d turns, %d tokens, %d truncated, tau %.2f, %.1fs",
                 summary.rows_written, summary.rows_resumed, out, summary.turns, summary.completion_tokens,
                 summary.truncated_turns, summary.tau, summary.seconds)
        return summary

    def _next_turn(self, state: _Row, active: dict, done: dict, summary: RegenSummary) -> None:
        """Request the row's next answer, or hand the row to the writer when every turn is answered."""
        turn = len(state.answers)
        if turn < len(state.row.user_turns):
            prompt = self.tokenizer.apply_chat_template(state.messages(), add_generation_prompt=True, tokenize=True,
                                                        enable_thinking=self.config.enable_thinking,
                                                        return_dict=False)
            try:
                request = self.engine.add_request(list(prompt), self.config.sampling(state.row.index, turn),
                                                  request_id=f"row{state.row.index}-turn{turn}")
                active[request.id] = (state, request)
                return
            except ContextLengthError:
                log.warning("row %d (line %d): turn %d does not fit the context window; the row ends before it",
                            state.row.index, state.row.line, turn)
                state.finish.append("context_length")
                summary.truncated_turns += 1
        done[state.pos] = state.output()

    def _record(self, state: _Row, request: Request, summary: RegenSummary) -> None:
        if request.finish_reason not in ("stop", "length"):
            raise RegenerationError(f"row {state.row.index} (line {state.row.line}) turn {len(state.answers)}: "
                                    f"generation ended with {request.finish_reason}: {request.error}")
        ids = list(request.output_ids)
        if ids and request.finish_reason == "stop" and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        state.answers.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        state.finish.append(request.finish_reason)
        state.tokens.append(len(request.output_ids))
        summary.turns += 1
        summary.completion_tokens += len(request.output_ids)
        summary.rounds += len(request.stats.rounds) + 1  # + the prefill, which commits the first token
        summary.truncated_turns += request.finish_reason == "length"
