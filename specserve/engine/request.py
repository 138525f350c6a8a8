"""Request state inside the engine, its statistics, and what it streams out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from specserve.decoding.sampling import SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestStats:
    """Speculation and latency counters of one request.

    `accepted_per_pos[j]` counts rounds whose draft at position j+1 was accepted, `verified_per_pos[j]`
    rounds that verified a draft at position j+1. τ = committed tokens per round, bonus included.
    """

    rounds: int = 0
    committed_in_rounds: int = 0
    drafted: int = 0  # tokens the drafter proposed
    verified: int = 0  # draft tokens sent to the target
    accepted: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    verified_per_pos: list[int] = field(default_factory=list)
    round_lengths: list[int] = field(default_factory=list)
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    finished: float | None = None

    def record_round(self, drafted: int, verified: int, accepted: int, committed: int) -> None:
        self.rounds += 1
        self.drafted += drafted
        self.verified += verified
        self.accepted += accepted
        self.committed_in_rounds += committed
        self.round_lengths.append(committed)
        for counts, n in ((self.verified_per_pos, verified), (self.accepted_per_pos, accepted)):
            counts.extend([0] * (n - len(counts)))
            for j in range(n):
                counts[j] += 1

    @property
    def tau(self) -> float:
        """Mean accepted length: committed tokens per verification round (bonus included)."""
        return self.committed_in_rounds / self.rounds if self.rounds else 0.0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    def tokens_per_second(self, n_tokens: int) -> float:
        end = self.finished or time.perf_counter()
        return n_tokens / max(end - self.arrival, 1e-9)

    def as_dict(self, n_tokens: int) -> dict:
        return {"rounds": self.rounds, "tau": round(self.tau, 4), "drafted": self.drafted,
                "verified": self.verified, "accepted": self.accepted,
                "accepted_per_pos": list(self.accepted_per_pos), "verified_per_pos": list(self.verified_per_pos),
                "ttft_s": self.ttft, "tokens_per_s": self.tokens_per_second(n_tokens)}


@dataclass
class RequestOutput:
    """A streamed delta: the tokens (and text) committed for one request in one engine step."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None  # "stop", "length", "abort", "error"
    error: str | None = None


@dataclass
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams  # seed fixed at admission
    on_output: Callable[[RequestOutput], None] | None = None
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    stats: RequestStats = field(default_factory=RequestStats)
    # committed but not yet shown to the drafter (commit is folded into the next propose)
    unsent_ids: list[int] = field(default_factory=list)
    unsent_taps: torch.Tensor | None = None

    @property
    def committed_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
