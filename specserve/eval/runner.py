"""Run the paper's evaluation protocol (algorithms.md section 6) through the engine and collect the rounds.

Protocol: the first user turn of every benchmark row, formatted with the target's chat template
(generation prompt on, thinking off); sampling at `temperature` (1.0 by default) until one of the
target's EOS ids or `max_new_tokens`; a fixed full-block budget `FixedK(γ)`, so every drafted token is
verified and the rounds measure the draft itself (the confidence-driven policies would censor them).

Results do not depend on the batch size: every prompt gets its own seed, a hash of (seed, prompt index),
and the engine's counter-based RNG keys every draw by that seed and the output position, so a prompt
samples the same tokens alone or in a batch of eight. Requests are batched with continuous batching
(`batch_size` = the engine's `max_batch`).

Confidences are recorded **raw**: a calibrated DSpark draft's STS temperatures are taken off the drafter
and kept in `DraftRun.temperatures`, so a report can show the head before and after scaling and STS can
be refitted on raw values. Under `FixedK` the confidences steer nothing, so the tokens are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from specserve.decoding.budget import FixedK
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import Drafter
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.registry import build_drafter
from specserve.engine.engine import SpecEngine
from specserve.engine.request import Request, RoundRecord
from specserve.engine.verifier import LocalVerifier
from specserve.errors import InvalidRequestError, SpecServeError
from specserve.eval.acceptance import acceptance_stats
from specserve.eval.benchmarks import Benchmark, chat_prompt_ids, load_benchmark
from specserve.eval.calibration import CalibrationReport, calibration_report
from specserve.eval.report import EvalReport
from specserve.eval.sts import STSCalibration, fit_sts
from specserve.eval.threshold_sweep import threshold_sweep
from specserve.target.model import CausalLM

log = logging.getLogger("specserve.eval")


class EvalError(SpecServeError):
    """An evaluation cannot produce a valid result (a request failed, a benchmark yielded no rounds)."""


@dataclass(frozen=True)
class EvalSettings:
    """The protocol's knobs. Defaults follow the paper except `max_new_tokens`' caller-chosen budgets."""

    temperature: float = 1.0  # paper: 1.0 (0 = greedy)
    max_new_tokens: int = 2048  # paper: 2048
    block_size: int | None = None  # γ verified per round; None = the draft's own block (paper: 7)
    limit: int | None = None  # first N prompts of every benchmark; None = all
    seed: int = 0  # base of the per-prompt seeds
    batch_size: int = 1  # requests decoded together (paper: 1; does not change the results)

    def __post_init__(self):
        SamplingParams(temperature=self.temperature, max_tokens=self.max_new_tokens)  # validates both
        for name, low in (("block_size", 1), ("limit", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InvalidRequestError(name.replace("_", "-"), f"must be an integer >= {low}, got {value!r}")

    def sampling(self, index: int) -> SamplingParams:
        """Sampling parameters of prompt `index` (stop at the target's EOS ids, which the engine applies)."""
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_new_tokens,
                              seed=prompt_seed(self.seed, index))


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`: a 63-bit hash of (seed, index), independent of batching and of the draft."""
    digest = hashlib.blake2b(f"specserve-eval:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class DraftSpec:
    """A draft to evaluate: its display `name` and the `build_drafter` spec (`dspark:PATH`, `auto:PATH`, ...)."""

    name: str
    spec: str

    @classmethod
    def parse(cls, text: str) -> DraftSpec:
        """`NAME=SPEC`, or a bare `SPEC` named `kind:folder` (e.g. `dspark:checkpoint`)."""
        name = _explicit_name(text)
        if name is not None:
            return cls(name=name, spec=text[len(name) + 1:])
        kind, _, path = text.partition(":")
        return cls(name=f"{kind}:{Path(path).name}" if path else kind, spec=text)


def _explicit_name(text: str) -> str | None:
    name, sep, _ = text.partition("=")
    return name if sep and name and ":" not in name else None


def parse_drafts(texts: Sequence[str]) -> list[DraftSpec]:
    """Parse every `--draft`; bare specs whose short names clash are named by their full spec instead."""
    drafts = [DraftSpec.parse(t) for t in texts]
    short = [d.name for d in drafts]
    drafts = [DraftSpec(d.spec, d.spec) if short.count(d.name) > 1 and _explicit_name(t) is None else d
              for d, t in zip(drafts, texts, strict=True)]
    names = [d.name for d in drafts]
    if len(set(names)) != len(names):
        raise InvalidRequestError("draft", f"draft names must be unique, got {names}")
    return drafts


@dataclass(frozen=True)
class PromptSet:
    """One benchmark's prompts, tokenised for the target with the chat template."""

    benchmark: Benchmark
    ids: list[list[int]]

    @property
    def name(self) -> str:
        return self.benchmark.name


def load_prompt_sets(target: CausalLM, paths: Sequence[str | Path], limit: int | None) -> list[PromptSet]:
    """Load and tokenise every benchmark file; errors name the file (and line) before any generation starts."""
    benchmarks = [load_benchmark(p, limit) for p in paths]
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise InvalidRequestError("suite", f"benchmark names (file stems) must be unique, got {names}")
    if target.tokenizer is None:
        raise InvalidRequestError("target", "the target has no tokenizer; the protocol formats every prompt "
                                            "with its chat template")
    sets = []
    for bench in benchmarks:
        ids = [chat_prompt_ids(target.tokenizer, text) for text in bench.prompts]
        for i, prompt in enumerate(ids):
            if len(prompt) >= target.max_context:
                raise InvalidRequestError("suite", f"{bench.path}: prompt {i + 1} has {len(prompt)} tokens, the "
                                                   f"target's context window is {target.max_context}")
        sets.append(PromptSet(bench, ids))
    return sets


@dataclass
class DraftRun:
    """The rounds of one draft on every benchmark, kept per prompt (prompt order) for held-out splits."""

    name: str
    spec: str
    block_size: int  # γ actually used (FixedK)
    temperatures: tuple[float, ...] | None  # the draft's own STS temperatures (recorded rounds are raw)
    rounds: dict[str, list[list[RoundRecord]]] = field(default_factory=dict)  # benchmark -> prompt -> rounds
    seconds: dict[str, float] = field(default_factory=dict)  # benchmark -> wall time
    tokens: dict[str, int] = field(default_factory=dict)  # benchmark -> generated tokens
    finish_reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # benchmark -> stop/length -> count

    def pooled(self, benchmark: str | None = None) -> list[RoundRecord]:
        """Every round of one benchmark (or of all of them), in prompt order."""
        names = [benchmark] if benchmark is not None else list(self.rounds)
        return [r for name in names for prompt in self.rounds[name] for r in prompt]


def block_size_for(drafter: Drafter | None, requested: int | None, name: str) -> int:
    """γ of the FixedK budget: the requested block, which the draft must be able to fill; 0 without a draft."""
    if drafter is None:
        return 0
    if requested is None:
        return drafter.max_block
    if requested > drafter.max_block:
        raise InvalidRequestError("block-size", f"{name} drafts at most {drafter.max_block} tokens per round, "
                                                f"got {requested}")
    return requested


def run_prompts(engine: SpecEngine, prompts: Sequence[Sequence[int]], settings: EvalSettings,
                desc: str = "") -> list[Request]:
    """Generate every prompt to completion (prompt i seeded by `settings.sampling(i)`); returns the requests.

    A failed request raises EvalError: a benchmark with a hole in it is not comparable to the paper's.
    """
    for prompt in prompts:  # validate all before queueing any
        engine.check_prompt(prompt)
    with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=None, leave=False) as bar:
        def on_output(out):
            if out.finished:
                bar.update(1)

        requests = [engine.add_request(p, settings.sampling(i), on_output=on_output) for i, p in enumerate(prompts)]
        while engine.has_unfinished():
            engine.step()
    failed = [(i, r.error) for i, r in enumerate(requests) if r.finish_reason == "error"]
    if failed:
        i, error = failed[0]
        raise EvalError(f"{desc}: {len(failed)} request(s) failed; prompt {i + 1}: {error}")
    return requests


def run_drafter(target: CausalLM, drafter: Drafter | None, name: str, spec: str, prompt_sets: Sequence[PromptSet],
                settings: EvalSettings) -> DraftRun:
    """Evaluate one built drafter on every prompt set (raw confidences; its STS temperatures kept aside)."""
    gamma = block_size_for(drafter, settings.block_size, name)
    temperatures = None
    if isinstance(drafter, DSparkDrafter):
        temperatures, drafter.temperatures = drafter.temperatures, None
    verifier = LocalVerifier(target, tap_layers=drafter.target_layer_ids if drafter is not None else ())
    engine = SpecEngine(verifier, drafter, policy=FixedK(gamma), max_batch=settings.batch_size)
    run = DraftRun(name=name, spec=spec, block_size=gamma, temperatures=temperatures)
    for ps in prompt_sets:
        log.info("%s on %s: %d prompts, γ = %d, batch %d", name, ps.name, len(ps.ids), gamma, settings.batch_size)
        t0 = time.perf_counter()
        requests = run_prompts(engine, ps.ids, settings, desc=f"{name} {ps.name}")
        run.seconds[ps.name] = time.perf_counter() - t0
        run.rounds[ps.name] = [r.stats.rounds for r in requests]
        run.tokens[ps.name] = sum(len(r.output_ids) for r in requests)
        run.finish_reasons[ps.name] = dict(Counter(r.finish_reason for r in requests))
        rounds = run.pooled(ps.name)
        tau = sum(r.committed for r in rounds) / len(rounds) if rounds else float("nan")
        log.info("%s on %s: %d rounds, %d tokens, tau %.3f, finish %s, %.1fs", name, ps.name, len(rounds),
                 run.tokens[ps.name], tau, run.finish_reasons[ps.name], run.seconds[ps.name])
        idle = sum(r.drafted == 0 for prompt in run.rounds[ps.name] for r in prompt[:-1])
        if gamma and idle:  # the engine drops a failing drafter and decodes on: τ would quietly sink
            log.warning("%s on %s: %d rounds drafted nothing before their request's last round (a drafter failure "
                        "logged above, or the context limit)", name, ps.name, idle)
    return run


def evaluate(target: CausalLM, drafts: Sequence[DraftSpec], prompt_sets: Sequence[PromptSet],
             settings: EvalSettings) -> list[DraftRun]:
    """Build each draft in turn (one in memory at a time) and run it over every prompt set."""
    # the trainer service reads this banner and the per-run lines of `run_drafter` as the job's progress
    log.info("evaluation: %d drafts x %d benchmarks", len(drafts), len(prompt_sets))
    runs = []
    for draft in drafts:
        t0 = time.perf_counter()
        drafter = build_drafter(draft.spec, target, settings.block_size)
        log.info("loaded %s (%s) in %.1fs", draft.name, draft.spec, time.perf_counter() - t0)
        runs.append(run_drafter(target, drafter, draft.name, draft.spec, prompt_sets, settings))
        del drafter
    return runs


def build_report(runs: Sequence[DraftRun], settings: dict) -> EvalReport:
    """Acceptance per (draft, benchmark); calibration (raw, and STS when the draft has temperatures) and the
    threshold sweep per draft with confidences, pooled over its benchmarks."""
    report = EvalReport(acceptance={}, settings=dict(settings))
    report.settings["drafts"] = {r.name: {"spec": r.spec, "block_size": r.block_size,
                                          "sts_temperatures": r.temperatures} for r in runs}
    report.settings["runs"] = {r.name: {b: {"prompts": len(prompts), "generated_tokens": r.tokens.get(b),
                                            "finish_reasons": r.finish_reasons.get(b),
                                            "seconds": round(r.seconds.get(b, 0.0), 3)}
                                        for b, prompts in r.rounds.items()} for r in runs}
    for run in runs:
        report.acceptance[run.name] = {}
        for bench in run.rounds:
            try:
                report.acceptance[run.name][bench] = acceptance_stats(run.pooled(bench))
            except ValueError as exc:
                raise EvalError(f"{run.name} on {bench}: {exc}") from None
        rounds = run.pooled()
        if not any(r.confidence is not None for r in rounds):
            continue
        report.calibration[run.name] = {"raw": calibration_report(rounds)}
        if run.temperatures:
            report.calibration[run.name]["sts"] = calibration_report(rounds, run.temperatures)
        try:
            report.sweeps[run.name] = threshold_sweep(rounds, temperatures=run.temperatures)
        except ValueError as exc:  # e.g. every round was cut short by max_new_tokens
            log.warning("no threshold sweep for %s: %s", run.name, exc)
    return report


def split_prompts(run: DraftRun, heldout_fraction: float, seed: int = 0
                  ) -> tuple[list[RoundRecord], list[RoundRecord]]:
    """(fit, held-out) rounds, split by prompt over all benchmarks (rounds of one prompt are correlated).

    A seeded permutation picks round(fraction · prompts) held-out prompts, at least one on each side;
    fraction 0 returns every round on both sides (an in-sample fit).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise InvalidRequestError("heldout-fraction", f"must be in [0, 1), got {heldout_fraction}")
    prompts = [rounds for bench in run.rounds.values() for rounds in bench]
    if heldout_fraction == 0.0:
        every = [r for rounds in prompts for r in rounds]
        return every, every
    if len(prompts) < 2:
        raise InvalidRequestError("heldout-fraction", f"a held-out split needs at least 2 prompts, got "
                                                      f"{len(prompts)} (use 0 to fit and report in-sample)")
    n_heldout = min(max(round(heldout_fraction * len(prompts)), 1), len(prompts) - 1)
    heldout = set(np.random.default_rng(seed).permutation(len(prompts))[:n_heldout].tolist())
    fit = [r for i, rounds in enumerate(prompts) if i not in heldout for r in rounds]
    held = [r for i, rounds in enumerate(prompts) if i in heldout for r in rounds]
    return fit, held


@dataclass(frozen=True)
class CalibrationResult:
    """An STS fit on some prompts' rounds and its check on the held-out prompts' rounds."""

    calibration: STSCalibration  # what goes into calibration.json (held-out metrics in `fitted_on`)
    before: CalibrationReport  # the raw head on the held-out rounds
    after: CalibrationReport  # the STS-scaled head on the same rounds
    fit_rounds: int
    heldout_rounds: int


def calibrate_run(run: DraftRun, heldout_fraction: float, seed: int = 0,
                  fitted_on: dict | None = None) -> CalibrationResult:
    """Fit STS on the fitting prompts of `run` (raw confidences), measure before/after on the held-out ones."""
    fit, held = split_prompts(run, heldout_fraction, seed)
    try:
        calibration = fit_sts(fit, fitted_on=fitted_on)
    except ValueError as exc:
        raise EvalError(f"{run.name}: {exc}") from None
    before, after = calibration_report(held), calibration_report(held, calibration.temperatures)
    heldout = {"fraction": heldout_fraction, "rounds": len(held), "ece_before": before.ece, "ece_after": after.ece,
               "auroc_before": before.auroc, "auroc_after": after.auroc}
    calibration = replace(calibration, fitted_on={**calibration.fitted_on, "heldout": heldout})
    return CalibrationResult(calibration, before, after, fit_rounds=len(fit), heldout_rounds=len(held))
