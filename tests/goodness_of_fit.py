"""Chi-square goodness of fit for the statistical tests (sampler, rejection sampling, engine)."""

from __future__ import annotations

import numpy as np
from scipy.stats import chisquare


def chi2_pvalue(counts, probs, min_expected: float = 5.0) -> float:
    """p-value of observed `counts` against exact `probs` (same shape), pooling sparse cells.

    Cells whose expected count is below `min_expected` are merged into one bin (folded into the
    smallest other bin if still too small). Any count in a zero-probability cell gives p = 0.
    """
    counts = np.asarray(counts, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if counts[probs <= 0].any():
        return 0.0
    expected = probs / probs.sum() * counts.sum()
    small = expected < min_expected
    obs, exp = list(counts[~small]), list(expected[~small])
    if small.any():
        obs.append(counts[small].sum())
        exp.append(expected[small].sum())
        if exp[-1] < min_expected and len(exp) > 2:
            i = int(np.argmin(exp[:-1]))
            obs[i] += obs.pop()
            exp[i] += exp.pop()
    if len(exp) < 2:
        return 1.0
    return float(chisquare(obs, exp).pvalue)


def counts_of(ids: np.ndarray, n_cells: int) -> np.ndarray:
    """Histogram of integer cell ids in [0, n_cells)."""
    return np.bincount(np.asarray(ids, dtype=np.int64).ravel(), minlength=n_cells)
