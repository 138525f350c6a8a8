"""Verification-budget policies: how many of the proposed draft tokens each request verifies.

One small interface so that fixed-k, a static confidence threshold and the hardware-aware prefix
scheduler (algorithms.md section 7) are interchangeable inside the engine's decode step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class LoadReport:
    """What the verifier tells the policy about its current load."""

    sps: dict[int, float]  # forward steps per second for B tokens per forward (profiled at start-up)
    running: int = 0  # sessions open on the verifier


class BudgetPolicy(Protocol):
    """Chooses ℓ_r ≤ proposed_r for every request of a round."""

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

    def __post_init__(self):
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    @property
    def max_draft(self) -> int:
        return self.k

    def budget(self, proposed, confidences, load):
        return [min(self.k, n) for n in proposed]
