"""SamplingParams validation, the logits -> probabilities processing, and inverse-CDF sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from goodness_of_fit import chi2_pvalue, counts_of

from specserve.decoding.rng import Stream, uniforms
from specserve.decoding.sampling import SamplingParams, logits_to_probs, sample_from
from specserve.errors import InvalidRequestError

# Probabilities 0.5, 0.3, 0.15, 0.05 placed at shuffled ids: masks must follow the values, not the ids.
_RANKED_IDS = [2, 0, 3, 1]  # token ids from most to least likely
_RANKED_PROBS = [0.5, 0.3, 0.15, 0.05]


def _shuffled_logits() -> torch.Tensor:
    logits = torch.empty(1, 4)
    logits[0, _RANKED_IDS] = torch.tensor(_RANKED_PROBS).log()
    return logits


def _support(probs: torch.Tensor) -> set[int]:
    return set(torch.nonzero(probs[0] > 0).flatten().tolist())


# ---- SamplingParams ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("temperature", -0.5, "-0.5"),
        ("temperature", -1e-9, "-1e-09"),
        ("temperature", math.nan, "nan"),
        ("temperature", math.inf, "inf"),
        ("top_p", 0.0, "0.0"),
        ("top_p", -0.1, "-0.1"),
        ("top_p", 1.5, "1.5"),
        ("top_p", math.nan, "nan"),
        ("top_p", "0.9", "'0.9'"),
        ("temperature", "1", "'1'"),
        ("top_k", -1, "-1"),
        ("top_k", 2.5, "2.5"),
        ("max_tokens", 0, "0"),
        ("max_tokens", -3, "-3"),
        ("max_tokens", 1.5, "1.5"),
        ("seed", "7", "'7'"),
        ("seed", 1.5, "1.5"),
    ],
)
def test_invalid_params_raise_error_naming_field_and_value(field, value, shown):
    """Every out-of-range parameter is refused with a typed error that names the field and the value."""
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.field == field
    assert field in str(info.value)
    assert shown in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=0.0), dict(top_p=1.0), dict(top_p=1e-6), dict(top_k=0), dict(max_tokens=1),
     dict(seed=0), dict(seed=-5), dict(seed=2**70), dict(temperature=2, top_k=1)],
)
def test_boundary_values_are_accepted(kwargs):
    """The edges of each allowed range are valid requests."""
    params = SamplingParams(**kwargs)
    for name, value in kwargs.items():
        assert getattr(params, name) == value


# ---- logits_to_probs -----------------------------------------------------------------------------
def test_greedy_is_one_hot_at_first_argmax():
    """Temperature 0 gives a one-hot row at the argmax, the lowest id on ties (as HF generate does)."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, -1.0, 2.0, 4.0]])
    probs = logits_to_probs(logits, [SamplingParams()] * 2)
    assert torch.equal(probs, torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]))


@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0])
def test_temperature_divides_logits(temperature):
    """Sampling at temperature T uses softmax(logits / T)."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.5]])
    probs = logits_to_probs(logits, [SamplingParams(temperature=temperature)])
    torch.testing.assert_close(probs, torch.softmax(logits / temperature, -1))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_keeps_the_k_most_likely_tokens(top_k):
    """top-k zeroes all but the k highest logits and renormalises the rest proportionally."""
    probs = logits_to_probs(_shuffled_logits(), [SamplingParams(temperature=1.0, top_k=top_k)])
    kept = _RANKED_IDS[:top_k]
    assert _support(probs) == set(kept)
    mass = torch.tensor(_RANKED_PROBS[:top_k])
    torch.testing.assert_close(probs[0, kept], mass / mass.sum())


@pytest.mark.parametrize("top_k", [0, 4, 100])
def test_top_k_off_or_at_least_vocab_keeps_everything(top_k):
    """top_k 0 (off) or >= vocabulary is a no-op."""
    probs = logits_to_probs(_shuffled_logits(), [SamplingParams(temperature=1.0, top_k=top_k)])
    torch.testing.assert_close(probs, torch.softmax(_shuffled_logits(), -1))


@pytest.mark.parametrize(("top_p", "n_kept"), [(0.3, 1), (0.45, 1), (0.6, 2), (0.79, 2), (0.85, 3), (0.96, 4),
                                               (1.0, 4)])
def test_top_p_keeps_the_smallest_nucleus_reaching_p(top_p, n_kept):
    """top-p keeps the fewest most-likely tokens whose mass reaches p, renormalised."""
    probs = logits_to_probs(_shuffled_logits(), [SamplingParams(temperature=1.0, top_p=top_p)])
    kept = _RANKED_IDS[:n_kept]
    assert _support(probs) == set(kept)
    mass = torch.tensor(_RANKED_PROBS[:n_kept])
    torch.testing.assert_close(probs[0, kept], mass / mass.sum())


def test_top_p_applies_to_the_top_k_renormalised_distribution():
    """top-k comes first and top-p sees its renormalised mass (HF warper order): with k=2 the best token
    holds 0.625 >= 0.6, so only it survives, while top-p 0.6 alone keeps two tokens."""
    both = logits_to_probs(_shuffled_logits(), [SamplingParams(temperature=1.0, top_k=2, top_p=0.6)])
    assert _support(both) == {_RANKED_IDS[0]}


def test_temperature_is_applied_before_top_p():
    """The nucleus is taken on the temperature-scaled distribution: T=4 flattens it to three tokens."""
    probs = logits_to_probs(_shuffled_logits(), [SamplingParams(temperature=4.0, top_p=0.6)])
    assert _support(probs) == set(_RANKED_IDS[:3])


def test_each_row_of_a_batch_uses_its_own_params():
    """One call over rows with different params equals processing every row on its own."""
    params = [SamplingParams(), SamplingParams(temperature=0.7), SamplingParams(temperature=1.0, top_k=2),
              SamplingParams(temperature=1.0, top_p=0.6), SamplingParams(temperature=1.5, top_k=3, top_p=0.9),
              SamplingParams(temperature=0.0, top_k=2)]
    logits = torch.randn(len(params), 11, generator=torch.Generator().manual_seed(3)) * 3
    batched = logits_to_probs(logits, params)
    for i, p in enumerate(params):
        torch.testing.assert_close(batched[i : i + 1], logits_to_probs(logits[i : i + 1], [p]))
    assert len(_support(batched[2:3])) == 2


# ---- sample_from ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize(
    ("u", "token"),
    [(0.0, 0), (0.2499999, 0), (0.25, 1), (0.4999999, 1), (0.5, 3), (0.75, 3), (1 - 2**-53, 3)],
)
def test_inverse_cdf_picks_the_interval_containing_u(u, token, scale):
    """Token i is chosen exactly for u in [cdf(i-1), cdf(i)); zero-probability tokens never; rows need not
    be normalised."""
    probs = torch.tensor([[0.25, 0.25, 0.0, 0.5]]) * scale
    assert sample_from(probs, torch.tensor([u], dtype=torch.float64)).tolist() == [token]


def test_inverse_cdf_maps_a_uniform_grid_to_exact_counts():
    """On the grid u = i/1000 each token receives exactly 1000 * p(token) points."""
    probs = torch.tensor([0.125, 0.0, 0.375, 0.5, 0.0])
    u = torch.arange(1000, dtype=torch.float64) / 1000
    ids = sample_from(probs.expand(1000, -1), u)
    assert counts_of(ids.numpy(), 5).tolist() == [125, 0, 375, 500, 0]


def _counter_rng_samples(probs: torch.Tensor, n: int) -> np.ndarray:
    u = uniforms(range(n), Stream.SAMPLE, [7] * n, 1)[:, 0]
    return sample_from(probs.expand(n, -1), u).numpy()


def test_counter_rng_samples_follow_the_distribution():
    """Tokens drawn with one counter-RNG uniform per seed pass a chi-square test against p, and the same
    test rejects a slightly different p (so it has the power to catch a sampling bias)."""
    probs = torch.tensor([0.3, 0.02, 0.2, 0.0, 0.15, 0.08, 0.005, 0.145, 0.1])
    counts = counts_of(_counter_rng_samples(probs, 40_000), len(probs))
    assert chi2_pvalue(counts, probs) > 1e-3
    biased = probs + torch.tensor([-0.02, 0.0, 0.02, 0, 0, 0, 0, 0, 0])
    assert chi2_pvalue(counts, biased) < 1e-6
