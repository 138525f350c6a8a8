"""Sampling parameters and the logits -> distribution -> token path shared by target and drafters.

Lossless speculative sampling needs the target's `p` and the drafter's `q` processed the same way
(temperature, then top-k, then top-p), so both sides call `logits_to_probs`. Tokens are drawn by
inverse-CDF from a given uniform, which makes every draw a pure function of the counter-based RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specserve.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops. Validated on construction.

    temperature 0 means greedy. top_k 0 means no top-k. `seed` None draws a fresh seed at admission.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False

    def __post_init__(self):
        if not _is_number(self.temperature) or self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be a finite number >= 0, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p", f"must be a number in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequestError("top_k", f"must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError("max_tokens", f"must be an integer > 0, got {self.max_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidRequestError("seed", f"must be an integer, got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidRequestError("stop", f"must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def logits_to_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Rows of logits [N, V] -> processed probabilities [N, V] (float32), one SamplingParams per row.

    Greedy rows become one-hot at the argmax (first index on ties, as `generate` does).
    """
    logits = logits.float()
    n, vocab = logits.shape
    greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool)
    if bool(greedy.all()):
        return _one_hot(logits.argmax(-1), vocab)
    out = torch.empty_like(logits)
    if bool(greedy.any()):
        out[greedy] = _one_hot(logits[greedy].argmax(-1), vocab)
    rows = (~greedy).nonzero().squeeze(-1).tolist()
    sub = [params[i] for i in rows]
    x = logits[rows] / torch.tensor([p.temperature for p in sub])[:, None]
    if any(0 < p.top_k < vocab or p.top_p < 1.0 for p in sub):
        x = _filter_top_k_top_p(x, sub)
    out[rows] = torch.softmax(x, dim=-1)
    return out


def _filter_top_k_top_p(x: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Set logits outside each row's top-k and top-p nucleus to -inf (always keeps the best token)."""
    vocab = x.shape[-1]
    sorted_x, order = x.sort(dim=-1, descending=True)
    k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params])
    drop = torch.arange(vocab)[None, :] >= k[:, None]
    sorted_x = sorted_x.masked_fill(drop, -math.inf)
    top_p = torch.tensor([p.top_p for p in params])
    sorted_probs = torch.softmax(sorted_x, dim=-1)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_x = sorted_x.masked_fill(mass_before >= top_p[:, None], -math.inf)
    return torch.full_like(x, -math.inf).scatter(-1, order, sorted_x)


def _one_hot(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    out = torch.zeros(ids.shape[0], vocab)
    out[torch.arange(ids.shape[0]), ids] = 1.0
    return out


def sample_from(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row i of probs [N, V] with uniform u[i] in [0, 1) -> token ids [N]."""
    cdf = probs.double().cumsum(-1)
    target = (u.double() * cdf[:, -1])[:, None]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)
