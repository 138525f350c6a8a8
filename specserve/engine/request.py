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


@dataclass(frozen=True)
class RoundRecord:
    """One verification round of one request (what evaluation and calibration are computed from)."""

    drafted: int  # tokens the drafter proposed that could still be committed (capped by max_tokens/context)
    verified: int  # draft tokens sent to the target (the budget policy's choice)
    accepted: int  # accepted draft tokens (an accepted stop token ends the count)
    committed: int  # tokens this round counts toward τ: accepted + the bonus, none after a stop token
    confidence: tuple[float, ...] | None = None  # the drafter's per-slot confidences, when it has them


@dataclass
class RequestStats:
    """Speculation and latency counters of one request; every aggregate derives from `rounds`."""

    rounds: list[RoundRecord] = field(default_factory=list)
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    finished: float | None = None

    @property
    def tau(self) -> float:
        """Mean accepted length: committed tokens per verification round (bonus included)."""
        return sum(r.committed for r in self.rounds) / len(self.rounds) if self.rounds else 0.0

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.rounds)

    @property
    def verified(self) -> int:
        return sum(r.verified for r in self.rounds)

    def per_position(self) -> tuple[list[int], list[int]]:
        """(verified, accepted) counts per draft position 1..γ: rounds verifying / accepting position j+1."""
        width = max((r.verified for r in self.rounds), default=0)
        verified = [sum(r.verified > j for r in self.rounds) for j in range(width)]
        accepted = [sum(r.accepted > j for r in self.rounds) for j in range(width)]
        return verified, accepted

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    def tokens_per_second(self, n_tokens: int) -> float:
        end = self.finished or time.perf_counter()
        return n_tokens / max(end - self.arrival, 1e-9)

    def as_dict(self, n_tokens: int) -> dict:
        verified_per_pos, accepted_per_pos = self.per_position()
        return {"rounds": len(self.rounds), "tau": round(self.tau, 4),
                "drafted": sum(r.drafted for r in self.rounds), "verified": self.verified,
                "accepted": self.accepted, "accepted_per_pos": accepted_per_pos,
                "verified_per_pos": verified_per_pos, "ttft_s": self.ttft,
                "tokens_per_s": self.tokens_per_second(n_tokens)}


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
    unsent_taps: list[torch.Tensor] = field(default_factory=list)
    drafter_len: int = 0  # committed_len when the drafter last ran for this request (0: never)
    prompt_taps: torch.Tensor | None = None  # the prefill's taps, until the drafter session opens with them
    held_taps: int = 0  # positions whose taps the verifier holds back (`defer_taps`) until the drafter next runs
    drafter_open: bool = False  # its drafter session is open (from its first drafting round to its end)

    @property
    def committed_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
