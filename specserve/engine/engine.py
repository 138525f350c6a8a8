"""SpecEngine: continuous batching of speculative decoding over a Drafter and a Verifier.

Every `step` admits waiting requests (one batched prefill), then runs one round for the whole running
batch: propose -> budget policy -> verify -> commit and stream. Requests join and leave between
rounds. Any thread may add or abort requests: those calls only enqueue, and `step` applies them.

A request's drafter session is opened at its first drafting round, not at admission: its first token
streams without waiting on the drafter, and under a load where the engine decodes plainly, a request
that never drafts costs the drafter nothing (over gRPC the prompt's taps would cross the wire for it).
Likewise the verifier holds back the taps of the prompt and of every round a request does not draft in
(`defer_taps`); the engine takes them (`Verifier.take_taps`) when the request's drafter next runs.
"""

from __future__ import annotations

import logging
import queue
import secrets
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence

import torch

from specserve.decoding.budget import BudgetPolicy, FixedK, survival
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftBlock, Drafter, DraftRequest
from specserve.engine.detokenizer import IncrementalDetokenizer
from specserve.engine.request import Request, RequestOutput, RoundRecord, Status
from specserve.engine.round_costs import DraftShare, RoundCosts
from specserve.engine.verifier import OpenRequest, Verifier, VerifyRequest, VerifyResult
from specserve.errors import ContextLengthError, IncompatibleDrafterError, InvalidRequestError

log = logging.getLogger(__name__)

_NO_DRAFT = DraftBlock(ids=[])


def _joined(taps: list[torch.Tensor]) -> torch.Tensor | None:
    return None if not taps else taps[0] if len(taps) == 1 else torch.cat(taps)


class SpecEngine:
    """Serves many requests at once with one verifier and (optionally) one drafter."""

    def __init__(self, verifier: Verifier, drafter: Drafter | None = None, policy: BudgetPolicy | None = None,
                 tokenizer=None, max_batch: int = 32):
        if drafter is not None and drafter.vocab_size not in (None, verifier.vocab_size):
            raise IncompatibleDrafterError(f"drafter vocab_size {drafter.vocab_size} does not match the "
                                           f"target's vocab_size {verifier.vocab_size}")
        if max_batch < 1:
            raise InvalidRequestError("max_batch", f"must be >= 1, got {max_batch}")
        self.verifier = verifier
        self.drafter = drafter
        self.policy = policy or FixedK(drafter.max_block if drafter is not None else 0)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self._taps = drafter is not None and bool(drafter.target_layer_ids)  # the drafter reads the target's taps
        self.eos_token_ids = frozenset(verifier.eos_token_ids)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._drafting: set[str] = set()  # requests that draft: their drafter session is open or opens on demand
        self._live_ids: set[str] = set()  # ids added and not yet finished (add_request may run on any thread)
        # called after every successful verify with (requests, results): metrics, tracing
        self.verify_observers: list[Callable[[list[VerifyRequest], list[VerifyResult]], None]] = []
        self._ids_lock = threading.Lock()
        # a load-aware policy also learns what rounds cost here, and whether drafting pays at all
        self._costs = RoundCosts() if self.policy.needs_load else None
        self._opening_s = 0.0  # this round's time in Drafter.open: a new prompt's intake, not the round's cost
        # when the last round ended with requests still running (None: it left none, so the loop may have idled),
        # and this step's time admitting requests: the time between two rounds, less the admissions, is the rounds'
        self._round_end: float | None = None
        self._admit_s = 0.0
        self._admitted = 0  # prompt positions admitted since the last round, for requests that may draft

    # ---- requests in ----------------------------------------------------------------------------
    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                    request_id: str | None = None,
                    on_output: Callable[[RequestOutput], None] | None = None) -> Request:
        """Validate and enqueue a request; it is admitted at the next `step`. Thread-safe."""
        params = params or SamplingParams()
        prompt = self.check_prompt(prompt_ids)
        if params.seed is None:
            params = _with_seed(params, secrets.randbits(63))
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop", "stop strings need a tokenizer; this engine has none")
        request = Request(id=request_id or uuid.uuid4().hex, prompt_ids=prompt, params=params, on_output=on_output)
        with self._ids_lock:
            if request.id in self._live_ids:
                raise InvalidRequestError("request_id", f"{request.id!r} is already waiting or running")
            self._live_ids.add(request.id)
        self._inbox.put(("add", request))
        return request

    def abort(self, request_id: str) -> None:
        """Cancel a request at the next step (waiting or running). Thread-safe."""
        self._inbox.put(("abort", request_id))

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or not self._inbox.empty())

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Request]:
        """Run a list of prompts to completion (offline use, tests, benchmarks)."""
        per = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        for prompt in prompts:  # validate every prompt before queueing any, so a bad one leaves nothing behind
            self.check_prompt(prompt)
        requests = [self.add_request(p, sp) for p, sp in zip(prompts, per, strict=True)]
        while self.has_unfinished():
            self.step()
        return requests

    def check_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        """Validate a prompt (non-empty, ids in the vocabulary, room for one new token); returns it as a list."""
        prompt = list(prompt_ids)
        if not prompt:
            raise InvalidRequestError("prompt", "must contain at least one token")
        vocab = self.verifier.vocab_size
        bad = [t for t in prompt if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError("prompt", f"token ids must be integers in [0, {vocab}), got {bad[:5]}")
        if len(prompt) >= self.verifier.max_context:
            raise ContextLengthError("prompt", f"{len(prompt)} tokens do not fit the context window of "
                                     f"{self.verifier.max_context} (at least one token must be generated)")
        return prompt

    # ---- the step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Apply queued adds/aborts, admit what fits, run one speculative round. Returns the deltas."""
        outputs: list[RequestOutput] = []
        self._drain_inbox(outputs)
        admit_start = time.perf_counter()
        self._admit(outputs)
        self._admit_s = time.perf_counter() - admit_start
        if self.running:
            self._round(outputs)
        return outputs

    def _drain_inbox(self, outputs: list[RequestOutput]) -> None:
        while not self._inbox.empty():
            kind, item = self._inbox.get()
            if kind == "add":
                self.waiting.append(item)
                continue
            for r in [*self.waiting, *self.running]:
                if r.id == item:
                    if r.status is Status.WAITING:
                        self.waiting.remove(r)
                    self._finish(r, "abort", outputs)

    def _admit(self, outputs: list[RequestOutput]) -> None:
        batch = []
        while self.waiting and len(self.running) + len(batch) < self.max_batch:
            batch.append(self.waiting.popleft())
        if not batch:
            return
        drafts = self.drafter is not None and self.policy.max_draft > 0  # else no one reads the prompts' taps
        try:
            opened = self.verifier.open([OpenRequest(r.id, r.prompt_ids, r.params, want_taps=drafts and self._taps,
                                                     defer_taps=True) for r in batch])
        except Exception as exc:  # one bad batch must not take the loop down
            log.exception("prefill failed for %d requests", len(batch))
            for r in batch:
                self._finish(r, "error", outputs, error=str(exc))
            return
        for r, res in zip(batch, opened, strict=True):
            if res.error is not None:
                self._finish(r, "error", outputs, error=res.error)
                continue
            r.status = Status.RUNNING
            self.running.append(r)
            if self.tokenizer is not None:
                self._detok[r.id] = IncrementalDetokenizer(self.tokenizer, r.params.stop)
            if drafts:
                self._drafting.add(r.id)
                self._admitted += len(r.prompt_ids)
                # the drafter takes them in at the request's first drafting round; the verifier holds them till then
                r.prompt_taps = res.taps
                r.held_taps = len(r.prompt_ids) if self._taps and res.taps is None else 0
            self._commit(r, [res.token], outputs)

    def _open_drafter(self, r: Request) -> bool:
        """Open the request's drafter session with its prompt, its first token and the prompt's taps (the
        tokens committed since reach the drafter with the next propose); False when the drafter refused."""
        if r.drafter_open:
            return True
        start = time.perf_counter()
        try:
            self.drafter.open(r.id, [*r.prompt_ids, r.output_ids[0]], r.prompt_taps)
        except Exception:
            log.exception("drafter open failed for %s; it decodes without drafts", r.id)
            self._drop_drafter(r)
            return False
        finally:
            self._opening_s += time.perf_counter() - start
        r.drafter_open, r.prompt_taps = True, None
        return True

    def _round(self, outputs: list[RequestOutput]) -> None:
        start = time.perf_counter()
        # the time since the last round, beyond this step's admissions, is a cost of rounds too: the engine loop, and
        # the last round's outputs reaching the event loop, which competes for the GIL and the cores
        between = 0.0 if self._round_end is None else max(0.0, start - self._round_end - self._admit_s)
        self._opening_s = 0.0
        batch = list(self.running)
        cap = min(self.policy.max_draft, self.drafter.max_block) if self.drafter is not None else 0
        load = None
        drafters = len(batch)
        if self.policy.needs_load:  # what this round may draft, who drafts, the costs its budgets see
            report = self.verifier.load()
            cap = self._costs.draft_cap(cap, report.sps, len(batch))
            drafters = self._costs.drafting_requests(report.sps, len(batch), cap, plain_sps=report.plain_sps)
            if 0 < drafters < len(batch):  # a probe: a short draft, or the verify pads every other request to it
                cap = min(cap, self._costs.probe_cap)
            load = self._costs.priced(report, len(batch), cap, drafters)
        fed = [r for r in batch if r.id in self._drafting] if drafters else []
        if drafters < len(batch):  # a probe drafts for a few requests: those with the least to catch up
            fed = sorted(fed, key=lambda r: r.committed_len - r.drafter_len)[:drafters]
        # positions the drafter must take in before it drafts (prompts, rounds decoded without it); a round
        # that catches up on more than a round's worth costs more than drafting does in a steady stream
        backlog = sum(r.committed_len - r.drafter_len for r in fed)
        # what the drafter is asked for, if it runs (RoundCosts prices its call per slot)
        slots = sum(self._draft_room(r, cap) for r in fed) if load is not None else 0
        propose_start = time.perf_counter()
        blocks = self._propose(batch, fed, cap)
        propose_s = time.perf_counter() - propose_start - self._opening_s
        drafted = bool(fed)  # the drafter was called
        proposed = [min(len(b.ids), self._draft_room(r, len(b.ids))) for r, b in zip(batch, blocks, strict=True)]
        budgets = self.policy.budget(proposed, [b.confidence for b in blocks], load) if drafted else [0] * len(batch)
        fed_ids = {r.id for r in fed}  # the others' taps wait in the verifier until their drafter next runs
        items = [VerifyRequest(r.id, r.committed_len, b.ids[:n], None if b.q is None else b.q[:n], r.params,
                               position=len(r.output_ids), want_taps=self._taps and r.id in self._drafting,
                               defer_taps=r.id not in fed_ids)
                 for r, b, n in zip(batch, blocks, budgets, strict=True)]
        verify_start = time.perf_counter()
        try:
            results = self.verifier.verify(items)
        except Exception as exc:
            log.exception("verification failed for a batch of %d", len(batch))
            for r in batch:
                self._finish(r, "error", outputs, error=str(exc))
            self._round_end = None
            return
        verify_s = time.perf_counter() - verify_start
        for observer in self.verify_observers:
            try:
                observer(items, results)
            except Exception:  # an observer (metrics) must never break decoding
                log.exception("verify observer %r failed", observer)
        for r, block, k, n, res in zip(batch, blocks, proposed, budgets, results, strict=True):
            if res.error is not None:
                self._finish(r, "error", outputs, error=res.error)
                continue
            committed = self._round_length(res.tokens, r.params)
            confidence = None if block.confidence is None else tuple(block.confidence[:k].tolist())
            r.stats.rounds.append(RoundRecord(drafted=k, verified=n, committed=committed,
                                              accepted=min(res.accepted, committed), confidence=confidence))
            if r.id in self._drafting:
                r.unsent_ids.extend(res.tokens)
                if res.taps is not None:
                    r.unsent_taps.append(res.taps)  # joined once, when the drafter next runs
                elif self._taps and r.id not in fed_ids:
                    r.held_taps += len(res.tokens)  # the positions this round processed
            self._commit(r, res.tokens, outputs)
        if load is not None:
            share = None
            if drafted and drafters < len(batch):  # what the requests that drafted verified and committed
                asked = {r.id for r in fed}
                mine = [i for i, r in enumerate(batch) if r.id in asked]
                longest = max(budgets[i] for i in mine)
                share = DraftShare(len(mine), sum(len(results[i].tokens) for i in mine),
                                   sum(budgets[i] + load.padding_cost * (longest - budgets[i]) for i in mine))
            # each request's prefix survival a_j over the slots it drafted (None: a draft without confidences)
            survivals = [survival(b.confidence[:k]) if b.confidence is not None and k else None
                         for b, k in zip(blocks, proposed, strict=True)]
            self._costs.record(drafted, time.perf_counter() - start - self._opening_s + between, load.sps, len(batch),
                               tokens=len(batch) + sum(budgets), committed=sum(len(res.tokens) for res in results),
                               steady=backlog <= len(fed) * (self.policy.max_draft + 1), longest=max(budgets),
                               verify_s=verify_s, padded=len(batch) * max(budgets) - sum(budgets),
                               padding_cost=load.padding_cost,
                               propose_s=propose_s if drafted else None, slots=slots,
                               survival=_mean_survival(survivals, cap), share=share, backlog=backlog,
                               admitted=self._admitted, plain_sps=load.plain_sps,
                               **_promised_and_accepted(survivals, budgets, results))
        self._admitted = 0
        self._round_end = time.perf_counter() if self.running else None

    def _propose(self, batch: list[Request], asked: list[Request], cap: int) -> list[DraftBlock]:
        """Drafts of the `asked` requests of the batch (the others get none)."""
        if cap == 0 or not asked:
            return [_NO_DRAFT] * len(batch)
        asked = [r for r in self._take_held_taps(asked) if self._open_drafter(r)]
        if not asked:
            return [_NO_DRAFT] * len(batch)
        items = [DraftRequest(session=r.id, new_ids=r.unsent_ids, committed_len=r.committed_len,
                              max_tokens=self._draft_room(r, cap), sampling=r.params,
                              position=len(r.output_ids), new_taps=_joined(r.unsent_taps)) for r in asked]
        try:
            blocks = self.drafter.propose(items)
            if len(blocks) != len(items):
                raise RuntimeError(f"drafter returned {len(blocks)} blocks for {len(items)} requests")
        except Exception:
            log.exception("drafter failed for %d requests; they continue without drafts", len(asked))
            for r in asked:
                self._drop_drafter(r)
            return [_NO_DRAFT] * len(batch)
        by_id = {}
        for r, block in zip(asked, blocks, strict=True):
            r.unsent_ids, r.unsent_taps, r.drafter_len = [], [], r.committed_len
            problem = block.error or self._invalid_draft(block)
            if problem is not None:
                log.warning("drafter refused %s (%s); it continues without drafts", r.id, problem)
                self._drop_drafter(r)
                block = _NO_DRAFT
            by_id[r.id] = block
        return [by_id.get(r.id, _NO_DRAFT) for r in batch]

    def _take_held_taps(self, asked: list[Request]) -> list[Request]:
        """Take the taps the verifier held back for the `asked` requests (their prompt, the rounds they did not draft
        in) into their unsent taps, the prompt's apart until the drafter session opens. A request whose held taps are
        lost (a replica failed over) drafts no more: its drafter is dropped, and it decodes on without drafts."""
        holding = [r for r in asked if r.held_taps]
        if not holding:
            return asked
        try:
            taken = self.verifier.take_taps([r.id for r in holding])
        except Exception:
            log.exception("taking held taps failed for %d requests; they continue without drafts", len(holding))
            taken = [None] * len(holding)
        for r, taps in zip(holding, taken, strict=True):
            if taps is None or taps.shape[0] != r.held_taps:
                log.warning("the verifier returned %s of the %d held tap positions of %s; it continues without drafts",
                            "none" if taps is None else taps.shape[0], r.held_taps, r.id)
                self._drop_drafter(r)
                continue
            r.held_taps = 0
            if not r.drafter_open and r.prompt_taps is None:  # held since admission: the prompt's come first
                r.prompt_taps, taps = taps[: len(r.prompt_ids)], taps[len(r.prompt_ids):]
            if taps.shape[0]:
                r.unsent_taps.append(taps)
        return [r for r in asked if r.id in self._drafting]

    def _invalid_draft(self, block: DraftBlock) -> str | None:
        vocab = self.verifier.vocab_size
        if any(not 0 <= t < vocab for t in block.ids):
            return f"draft ids outside [0, {vocab})"
        if block.q is not None and tuple(block.q.shape) != (len(block.ids), vocab):
            return f"q has shape {tuple(block.q.shape)}, expected ({len(block.ids)}, {vocab})"
        return None

    def _draft_room(self, r: Request, cap: int) -> int:
        """Drafts that can still be committed: one slot is kept for the bonus token."""
        remaining = r.params.max_tokens - len(r.output_ids) - 1
        context = self.verifier.max_context - r.committed_len
        return max(0, min(cap, remaining, context))

    def _round_length(self, tokens: list[int], params: SamplingParams) -> int:
        """Tokens a round counts toward τ: up to and including an accepted stop token (no bonus after it)."""
        for i, t in enumerate(tokens):
            if self._is_stop_token(t, params):
                return i + 1
        return len(tokens)

    def _is_stop_token(self, token: int, params: SamplingParams) -> bool:
        return (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids

    # ---- committing and finishing ---------------------------------------------------------------
    def _commit(self, r: Request, tokens: list[int], outputs: list[RequestOutput]) -> None:
        if r.stats.first_token is None:
            r.stats.first_token = time.perf_counter()
        new: list[int] = []
        reason = None
        for t in tokens:
            r.output_ids.append(t)
            new.append(t)
            if self._is_stop_token(t, r.params):
                reason = "stop"
            elif len(r.output_ids) >= r.params.max_tokens or r.committed_len >= self.verifier.max_context:
                reason = "length"
            if reason:
                break
        text = ""
        detok = self._detok.get(r.id)
        if detok is not None:
            text, hit = detok.push(r.output_ids)
            if hit:
                reason = "stop"
            elif reason:
                text += detok.flush()
            r.text = detok.text
        if reason:
            self._finish(r, reason, outputs, new_ids=new, new_text=text)
        else:
            self._emit(r, RequestOutput(r.id, new, text, finished=False), outputs)

    def _finish(self, r: Request, reason: str, outputs: list[RequestOutput], new_ids: list[int] | None = None,
                new_text: str = "", error: str | None = None) -> None:
        if r.status is Status.RUNNING:
            self.running.remove(r)
            self._close_sessions(r)
        r.status, r.finish_reason, r.error = Status.FINISHED, reason, error
        with self._ids_lock:
            self._live_ids.discard(r.id)
        r.stats.finished = time.perf_counter()
        self._detok.pop(r.id, None)
        self._emit(r, RequestOutput(r.id, new_ids or [], new_text, True, reason, error), outputs)

    def _close_sessions(self, r: Request) -> None:
        try:
            self.verifier.close(r.id)
        except Exception:
            log.exception("verifier close failed for %s", r.id)
        self._drop_drafter(r)

    def _drop_drafter(self, r: Request) -> None:
        if r.id in self._drafting:
            self._drafting.discard(r.id)
            r.unsent_ids, r.unsent_taps, r.prompt_taps, r.held_taps = [], [], None, 0
        if r.drafter_open:
            r.drafter_open = False
            try:
                self.drafter.close(r.id)
            except Exception:
                log.exception("drafter close failed for %s", r.id)

    @staticmethod
    def _emit(r: Request, out: RequestOutput, outputs: list[RequestOutput]) -> None:
        outputs.append(out)
        if r.on_output is not None:
            r.on_output(out)


def _mean_survival(survivals: list[list[float] | None], cap: int) -> list[float] | None:
    """Per slot j, the mean over requests of their prefix survival a_j = Π_{i≤j} c_i (requests whose drafts reach
    slot j); None unless some request's drafts reach the round's cap (rounds cut short by max_tokens say nothing of
    the slots past them)."""
    rows = [r for r in survivals if r]
    longest = max((len(r) for r in rows), default=0)
    if longest == 0 or longest < cap:
        return None
    return [statistics.fmean(r[j] for r in rows if len(r) > j) for j in range(longest)]


def _promised_and_accepted(survivals: list[list[float] | None], budgets: list[int],
                           results: list[VerifyResult]) -> dict:
    """Over the requests whose verified drafts carry confidences: the draft tokens those promised (Σ of the prefix
    survivals of the verified slots) and the draft tokens verification accepted; {} when none do."""
    promised, accepted, seen = 0.0, 0, False
    for row, n, res in zip(survivals, budgets, results, strict=True):
        if n == 0 or row is None or res.error is not None:
            continue
        seen = True
        promised += sum(row[:n])
        accepted += min(res.accepted, n)
    return {"promised": promised, "accepted": accepted} if seen else {}


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=seed)
