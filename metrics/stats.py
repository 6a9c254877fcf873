"""Statistics for score tables: bootstrap confidence intervals, paired Wilcoxon tests, seed summaries.

All three ignore NaN (a structure absent from both masks under the "nan" empty rule, an image without
edges for Qabf, a missing seed) and return NaN instead of raising when too little data is left.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as _scipy_stats

_BOOT_CHUNK = 1 << 21  # resampled values drawn at a time: bounds memory for large samples


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[~np.isnan(x)]


def bootstrap_ci(values, n_boot: int = 10000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap confidence interval.

    NaN values are dropped; an empty sample gives NaN for all three, a single value gives it three
    times. Deterministic for a given seed (``numpy.random.default_rng``), and vectorised: resamples
    are drawn as index blocks and averaged row-wise.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    rows = max(1, _BOOT_CHUNK // x.size)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    alpha = (1 - ci) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def paired_wilcoxon(x, y) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired samples x and y.

    Pairs with a NaN are dropped and zero differences discarded (Wilcoxon's method); SciPy's
    ``method="auto"`` then picks the exact or permutation distribution for small samples and the
    tie-corrected normal approximation otherwise. NaN when no non-zero difference is left; never
    raises on ties or zeros.
    """
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    d = d[d != 0]
    if d.size == 0:
        return math.nan
    with warnings.catch_warnings():  # older SciPy warns when ties force the normal approximation
        warnings.simplefilter("ignore")
        return float(_scipy_stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def mean_std_over_seeds(values) -> tuple[float, float]:
    """(mean, std) over per-seed results, std with ddof 1; NaN std for a single seed, NaN both for none.

    NaN entries (a missing seed) are ignored.
    """
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan
