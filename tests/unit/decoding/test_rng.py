"""The counter-based RNG: a pure function of (seed, stream, start, offset), uniform and independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from goodness_of_fit import chi2_pvalue
from scipy.stats import kstest

from specserve.decoding.rng import Stream, uniforms

_SEEDS = list(range(200))
_STARTS = list(range(50))
_WIDTH = 20


def _grid() -> np.ndarray:
    """Uniforms over seeds x streams x starts x offsets, shape [seeds, streams, starts, width]."""
    rows = [(seed, start) for seed in _SEEDS for start in _STARTS]
    per_stream = [uniforms([s for s, _ in rows], stream, [a for _, a in rows], _WIDTH).numpy()
                  for stream in Stream]
    out = np.stack(per_stream, axis=1)  # [rows, streams, width]
    return out.reshape(len(_SEEDS), len(_STARTS), len(Stream), _WIDTH).transpose(0, 2, 1, 3)


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    return _grid()


def test_same_key_gives_same_numbers():
    """Two calls with the same (seeds, stream, starts, width) return identical uniforms."""
    a = uniforms([3, 99, 2**62], Stream.ACCEPT, [0, 5, 17], 8)
    b = uniforms([3, 99, 2**62], Stream.ACCEPT, [0, 5, 17], 8)
    assert torch.equal(a, b)


def test_a_row_does_not_depend_on_its_batch_or_width():
    """Row r depends only on its own key: batching requests together, or asking for a wider block (as a
    drafter does one step at a time), never changes a number already drawn."""
    batch = uniforms([11, 12, 13], Stream.DRAFT, [4, 0, 9], 6)
    alone = uniforms([12], Stream.DRAFT, [0], 3)
    assert torch.equal(batch[1, :3], alone[0])


def test_values_are_float64_in_unit_interval(grid):
    """Shape [R, width], float64, every value in [0, 1)."""
    u = uniforms([1, 2], Stream.SAMPLE, [0, 0], 5)
    assert u.shape == (2, 5) and u.dtype == torch.float64
    assert grid.min() >= 0.0 and grid.max() < 1.0


def test_no_collisions_across_seeds_streams_starts_offsets(grid):
    """600k distinct keys give 600k distinct 53-bit values: no two keys share a stream of numbers."""
    assert np.unique(grid).size == grid.size


def test_negative_and_large_seeds_give_their_own_streams():
    """Seeds are arbitrary integers: -1, 1 and 2**63 + 1 do not reuse each other's numbers."""
    u = uniforms([-1, 1, 2**63 + 1], Stream.SAMPLE, [0, 0, 0], 4)
    assert np.unique(u.numpy()).size == u.numel()


@pytest.mark.parametrize("stream", list(Stream), ids=lambda s: s.name)
def test_each_stream_is_uniform(grid, stream):
    """Kolmogorov-Smirnov against U(0, 1) over 200k draws of one stream."""
    values = grid[:, list(Stream).index(stream)].ravel()
    assert kstest(values, "uniform").pvalue > 1e-3


def _neighbours(grid: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of values whose keys differ by one step along `axis` (seed, stream, start or offset)."""
    first = np.take(grid, np.arange(grid.shape[axis] - 1), axis=axis)
    second = np.take(grid, np.arange(1, grid.shape[axis]), axis=axis)
    return first.ravel(), second.ravel()


@pytest.mark.parametrize("axis", [0, 1, 2, 3], ids=["seed", "stream", "start", "offset"])
def test_neighbouring_keys_are_independent(grid, axis):
    """Values at adjacent seeds / streams / starts / offsets are jointly uniform on a 10x10 grid (a
    chi-square test of independence), and uncorrelated."""
    a, b = _neighbours(grid, axis)
    cells = (a * 10).astype(int) * 10 + (b * 10).astype(int)
    counts = np.bincount(cells, minlength=100)
    assert chi2_pvalue(counts, np.full(100, 0.01)) > 1e-3
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
