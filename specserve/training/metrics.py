"""Training metrics as (numerator, denominator) sums, so that they aggregate exactly.

A metric logged over several micro-batches, ranks and steps is Σ numerators / Σ denominators, not a
mean of per-batch ratios (a batch with few supervised slots must weigh less). `MetricSums` holds the
running sums; `all_reduce` adds them across ranks in one collective before rank 0 logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

# name -> (numerator, denominator), detached scalar tensors
Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]

# sums a tensor over every process (identity when not distributed)
SumReduce = Callable[[torch.Tensor], torch.Tensor]


def no_reduce(x: torch.Tensor) -> torch.Tensor:
    """The single-process `SumReduce`."""
    return x


class MetricSums:
    """Running Σ numerator / Σ denominator per metric name."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}

    def add(self, terms: Mapping[str, tuple[torch.Tensor | float, torch.Tensor | float]]) -> None:
        """Add one batch's terms."""
        for name, (num, den) in terms.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(num)
            acc[1] += float(den)

    def all_reduce(self, reduce: SumReduce) -> None:
        """Sum every metric over all processes (one collective; every rank must hold the same names)."""
        if not self.sums:
            return
        names = sorted(self.sums)
        flat = reduce(torch.tensor([v for n in names for v in self.sums[n]], dtype=torch.float64))
        for i, name in enumerate(names):
            self.sums[name] = [float(flat[2 * i]), float(flat[2 * i + 1])]

    def values(self) -> dict[str, float]:
        """Σ numerator / Σ denominator of every metric with a positive denominator."""
        return {name: num / den for name, (num, den) in sorted(self.sums.items()) if den > 0}

    def clear(self) -> None:
        self.sums.clear()
