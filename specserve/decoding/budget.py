"""Verification-budget policies: how many of the proposed draft tokens each request verifies.

One small interface so that fixed-k, a static confidence threshold and the hardware-aware prefix
scheduler (algorithms.md section 7) are interchangeable inside the engine's decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class LoadReport:
    """What the verifier tells the policy about its current load."""

    sps: dict[int, float]  # forward steps per second for B tokens per forward (profiled at start-up)
    running: int = 0  # sessions open on the verifier
    round_overhead_s: float = 0.0  # seconds a round spends outside the target forward (drafting, scheduling,
    #                                transport), measured by the engine over recent rounds
    verify_scale: float = 1.0  # measured verify time / profiled forward time (sampling, padding, transport per token)
    padding_cost: float = 0.0  # what a padded slot of a ragged verify costs, as a fraction of a verified token
    #                            (0: the verifier packs ragged batches; specserve's pads them: `CausalLM.padding_cost`)
    # forward steps per second for B sessions appending one token each: a plain round's layout, which `sps` (a
    # verify's: few sessions of several tokens) prices too cheap (`profile_plain`); empty: `sps` stands in for it
    plain_sps: dict[int, float] = field(default_factory=dict)

    def round_rate(self, tokens: float) -> float:
        """Rounds per second with `tokens` verified per forward: 1 / (overhead + forward time)."""
        return 1.0 / (self.round_overhead_s + self.verify_scale / sps_at(self.sps, tokens))


class BudgetPolicy(Protocol):
    """Chooses ℓ_r ≤ proposed_r for every request of a round."""

    needs_load: bool  # whether `budget` reads the verifier's LoadReport (the engine fetches it only then)

    @property
    def max_draft(self) -> int:
        """How many tokens to ask the drafter for (an upper bound on every ℓ_r)."""
        ...

    def budget(self, proposed: list[int], confidences: list[torch.Tensor | None],
               load: LoadReport | None) -> list[int]:
        ...


@dataclass
class FixedK:
    """Verify min(k, proposed) tokens for every request, whatever the load or confidence."""

    k: int
    needs_load = False

    def __post_init__(self):
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    @property
    def max_draft(self) -> int:
        return self.k

    def budget(self, proposed, confidences, load):
        return [min(self.k, n) for n in proposed]


def survival(confidence: torch.Tensor) -> list[float]:
    """Prefix survival a_j = Π_{i≤j} c_i of one request's per-slot confidences."""
    return torch.cumprod(confidence.double(), 0).tolist()


@dataclass
class StaticThreshold:
    """Verify the longest prefix whose cumulative confidence exceeds `threshold` (paper Fig. 5).

    Requests without confidences verify everything proposed, up to `max_block`.
    """

    threshold: float
    max_block: int
    needs_load = False

    def __post_init__(self):
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")

    @property
    def max_draft(self) -> int:
        return self.max_block

    def budget(self, proposed, confidences, load):
        out = []
        for n, conf in zip(proposed, confidences, strict=True):
            if conf is None:
                out.append(min(n, self.max_block))
                continue
            a = survival(conf[:n])
            out.append(next((j for j, v in enumerate(a) if v <= self.threshold), len(a)))
        return out


@dataclass
class PrefixScheduler:
    """The hardware-aware prefix scheduler (algorithms.md §7, Algorithm 1).

    Admits draft positions in order of prefix survival while the expected committed tokens per second,
    τ*·SPS(B), keeps rising, and stops at the first position that does not pay. SPS(B) is the profiled
    forward rate turned into a round rate with the engine's measured per-round overhead
    (`LoadReport.round_rate`): where drafting and scheduling cost as much as the forward (small models,
    CPUs, remote drafters), a verified token costs less of a round than the forward alone suggests.
    The engine also reports what a verified token really costs against the profiled forward
    (`verify_scale`, measured on its own rounds: the sampler, a ragged batch's padding, transport).
    Padding is not priced per candidate: the first candidate always widens the batch, and charging it the
    padding of every other row would stop the early stop before the candidates that fill those slots.
    With no overhead measured yet this is exactly the paper's τ*·SPS(B). The early stop is what
    keeps it lossless: c_{j+1} depends on the sampled x_j, so looking past a drop would make admitting
    x_j depend on its own value. `early_stop=False` exists only to demonstrate that bias in tests.
    Requests without confidences count with confidence `default_confidence` per slot.

    A verifier that pads a ragged batch to its longest request (`LoadReport.padding_cost` ρ > 0) charges the
    padding whether or not it holds tokens, so after the early stop the requests shorter than the longest are
    filled towards it, their slots taken in the same order as Algorithm 1's candidates, while a slot pays at the
    cheaper price of turning padding into a token ((1 - ρ) of a verified one), up to the first that does not.
    Lossless for the same reason as the early stop: whether slot j of a request is verified depends on what
    Algorithm 1 decided (its survivals up to the stopping candidate, before slot j) and on the candidates
    taken before slot j (its own earlier slots, other requests'), never on a later slot of its own, whose
    survival reads x_j. Without padding cost (a packing verifier) the budgets are Algorithm 1's.
    """

    max_block: int
    early_stop: bool = True
    default_confidence: float = 0.5
    needs_load = True

    @property
    def max_draft(self) -> int:
        return self.max_block

    def budget(self, proposed, confidences, load):
        if load is None or not load.sps:
            raise ValueError("the prefix scheduler needs the verifier's SPS table (LoadReport.sps)")
        survivals = [survival(torch.full((n,), self.default_confidence) if conf is None else conf[:n])
                     for n, conf in zip(proposed, confidences, strict=True)]
        candidates = [(a, r, j + 1) for r, row in enumerate(survivals) for j, a in enumerate(row) if a > 0]
        candidates.sort(key=_admission_order)
        lengths = [0] * len(proposed)
        best_lengths = list(lengths)
        batch = len(proposed)
        expected = float(batch)  # every request verifies its anchor
        best = expected * load.round_rate(batch)
        for a, r, j in candidates:
            lengths[r] = j
            batch += 1
            expected += a
            throughput = expected * load.round_rate(batch)
            if throughput > best:
                best, best_lengths = throughput, list(lengths)
            elif self.early_stop:
                break
        if load.padding_cost > 0:
            _fill_padding(best_lengths, survivals, load)
        return best_lengths


def _admission_order(candidate: tuple[float, int, int]) -> tuple[float, int, int]:
    """(survival, request, slot) by falling survival; ties keep each request's prefix order. Algorithm 1 and the
    padding fill both admit slots in this order, which is what keeps each slot's admission blind to later drafts."""
    a, r, j = candidate
    return -a, r, j


def _fill_padding(lengths: list[int], survivals: list[list[float]], load: LoadReport) -> None:
    """Extend requests towards the longest one, slots in Algorithm 1's order (survival, request, slot), while a slot's
    survival pays for turning padding into a token, a / dt > E / t (E the round's expected committed tokens, t its
    time at the verify's effective tokens, a padded slot counting ρ); stop at the first slot that does not pay."""
    width = max(lengths, default=0)
    if width == 0:
        return
    rho = min(load.padding_cost, 1.0)
    real = len(lengths) + sum(lengths)
    padded = len(lengths) * width - sum(lengths)
    expected = len(lengths) + sum(sum(row[:n]) for row, n in zip(survivals, lengths, strict=True))
    seconds = 1.0 / load.round_rate(real + rho * padded)
    candidates = sorted(((row[j], r, j + 1) for r, row in enumerate(survivals)
                         for j in range(lengths[r], min(width, len(row)))), key=_admission_order)
    for a, r, j in candidates:
        after = 1.0 / load.round_rate(real + 1 + rho * (padded - 1))
        if not a * seconds > expected * (after - seconds):  # (a NaN survival stops it too)
            break
        lengths[r] = j
        real, padded, expected, seconds = real + 1, padded - 1, expected + a, after


def sps_at(table: dict[int, float], tokens: float) -> float:
    """SPS for `tokens` per forward: the profiled value, linear in between, constant tokens/s beyond."""
    if tokens in table:
        return table[tokens]
    sizes = sorted(table)
    if tokens > sizes[-1]:
        return table[sizes[-1]] * sizes[-1] / tokens
    if tokens < sizes[0]:
        return table[sizes[0]]
    hi = next(s for s in sizes if s > tokens)
    lo = max(s for s in sizes if s < tokens)
    w = (tokens - lo) / (hi - lo)
    return table[lo] * (1 - w) + table[hi] * w
