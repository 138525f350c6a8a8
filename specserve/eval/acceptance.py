"""Accepted length τ and per-position acceptance of a benchmark, pooled over all its verification rounds.

Definitions (algorithms.md section 1), for rounds pooled over every prompt of one benchmark:

- τ = Σ committed / #rounds (bonus included; a round ended by an accepted stop token counts no bonus,
  which `RoundRecord.committed` already applies). Pooled, not a mean of per-prompt means.
- prefix survival at k = #rounds with ≥ k accepted / #rounds in which position k was observed.
- conditional acceptance at k = #rounds accepting position k / #rounds that accepted all positions < k
  and in which position k was observed (paper Fig. 2).

Position k is *observed* in a round when it was verified, except after an accepted stop token: the
round ends there, so later positions are neither accepted nor rejected (they are censored, not counted
as rejections). See `observed_length`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from specserve.engine.request import RoundRecord


def ended_by_stop(r: RoundRecord) -> bool:
    """Whether an accepted draft stop token ended the round (no bonus, so committed == accepted)."""
    return r.accepted > 0 and r.committed == r.accepted


def observed_length(r: RoundRecord) -> int:
    """Draft positions whose accept/reject outcome is known: the verified ones, cut at an accepted stop token."""
    return r.accepted if ended_by_stop(r) else r.verified


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class AcceptanceStats:
    """Acceptance metrics of one drafter on one benchmark. Lists are indexed by draft position k − 1."""

    rounds: int
    tau: float  # committed tokens per round, pooled
    drafted: int  # tokens the drafter proposed
    verified: int  # draft tokens sent to the target
    accepted: int  # accepted draft tokens
    committed: int  # tokens committed (accepted + bonus/replacement, none after a stop token)
    stop_rounds: int  # rounds ended by an accepted stop token
    observed_per_position: list[int]  # rounds in which position k was observed
    accepted_per_position: list[int]  # rounds accepting position k (hence every position < k)
    reached_per_position: list[int]  # rounds that accepted all positions < k and observed position k
    tau_histogram: list[int]  # tau_histogram[n] = rounds that committed n tokens

    @property
    def verify_rate(self) -> float | None:
        """Share of the drafted tokens that were verified (1.0 under a fixed full-block budget)."""
        return _ratio(self.verified, self.drafted)

    @property
    def acceptance_rate(self) -> float | None:
        """Share of the verified draft tokens that were accepted."""
        return _ratio(self.accepted, self.verified)

    @property
    def prefix_survival(self) -> list[float | None]:
        """#rounds with ≥ k accepted / #rounds observing position k, per position (None: never observed)."""
        return [_ratio(a, n) for a, n in zip(self.accepted_per_position, self.observed_per_position, strict=True)]

    @property
    def conditional_acceptance(self) -> list[float | None]:
        """#rounds accepting k / #rounds that accepted all of 1..k−1 and observed k (None: never reached)."""
        return [_ratio(a, n) for a, n in zip(self.accepted_per_position, self.reached_per_position, strict=True)]

    def to_dict(self) -> dict:
        """JSON-ready dict: the counters plus the derived rates."""
        out = asdict(self)
        out.update(verify_rate=self.verify_rate, acceptance_rate=self.acceptance_rate,
                   prefix_survival=self.prefix_survival, conditional_acceptance=self.conditional_acceptance)
        return out


def acceptance_stats(rounds: Iterable[RoundRecord]) -> AcceptanceStats:
    """Pool the rounds of every prompt of one benchmark into its acceptance metrics.

    Raises ValueError when there is no round at all (τ is undefined; e.g. every request ended at prefill).
    """
    rounds = list(rounds)
    if not rounds:
        raise ValueError("no verification rounds to evaluate (did every request finish at prefill?)")
    width = max(r.verified for r in rounds)
    observed, accepted, reached = [0] * width, [0] * width, [0] * width
    histogram = [0] * (max(r.committed for r in rounds) + 1)
    for r in rounds:
        n_obs = observed_length(r)
        for j in range(n_obs):  # position j + 1
            observed[j] += 1
            accepted[j] += r.accepted > j
            reached[j] += r.accepted >= j
        histogram[r.committed] += 1
    return AcceptanceStats(
        rounds=len(rounds),
        tau=sum(r.committed for r in rounds) / len(rounds),
        drafted=sum(r.drafted for r in rounds),
        verified=sum(r.verified for r in rounds),
        accepted=sum(r.accepted for r in rounds),
        committed=sum(r.committed for r in rounds),
        stop_rounds=sum(ended_by_stop(r) for r in rounds),
        observed_per_position=observed,
        accepted_per_position=accepted,
        reached_per_position=reached,
        tau_histogram=histogram,
    )
