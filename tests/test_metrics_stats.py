"""metrics.stats: bootstrap CI, paired Wilcoxon test, mean and std over seeds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from metrics import stats
from metrics.stats import bootstrap_ci, mean_std_over_seeds, paired_wilcoxon


def test_bootstrap_is_deterministic_and_matches_a_plain_loop():
    x = np.random.default_rng(0).normal(0.8, 0.1, 40)
    mean, low, high = bootstrap_ci(x, n_boot=2000, ci=0.9, seed=7)
    assert (mean, low, high) == bootstrap_ci(x, n_boot=2000, ci=0.9, seed=7)
    assert (low, high) != bootstrap_ci(x, n_boot=2000, ci=0.9, seed=8)[1:]
    rng = np.random.default_rng(7)
    loop = np.quantile(x[rng.integers(0, x.size, (2000, x.size))].mean(1), [0.05, 0.95])
    assert mean == pytest.approx(x.mean()) and (low, high) == pytest.approx(tuple(loop))
    assert low < mean < high


def test_bootstrap_chunks_do_not_change_the_result(monkeypatch):
    x = np.random.default_rng(1).random(300)
    whole = bootstrap_ci(x, n_boot=500)
    monkeypatch.setattr(stats, "_BOOT_CHUNK", 300 * 7)  # 7 resamples per block
    assert bootstrap_ci(x, n_boot=500) == whole


def test_bootstrap_ignores_nan_and_handles_tiny_samples():
    x = np.array([0.2, np.nan, 0.4, 0.9, np.nan])
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x[~np.isnan(x)], seed=3)
    assert bootstrap_ci([0.7, np.nan]) == (0.7, 0.7, 0.7)
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan]))
    wide, narrow = bootstrap_ci(x, ci=0.99), bootstrap_ci(x, ci=0.5)
    assert wide[1] <= narrow[1] <= narrow[2] <= wide[2]
    with pytest.raises(ValueError, match="ci must lie in"):
        bootstrap_ci(x, ci=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(x, n_boot=0)


def test_wilcoxon_matches_scipy_and_drops_nan_pairs():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.80, 0.05, 30), rng.normal(0.78, 0.05, 30)
    assert paired_wilcoxon(x, y) == pytest.approx(scipy_stats.wilcoxon(x, y).pvalue)
    x_nan, y_nan = x.copy(), y.copy()
    x_nan[3], y_nan[7] = np.nan, np.nan
    keep = np.ones(30, bool)
    keep[[3, 7]] = False
    assert paired_wilcoxon(x_nan, y_nan) == pytest.approx(scipy_stats.wilcoxon(x[keep], y[keep]).pvalue)
    assert paired_wilcoxon(x, x + 0.01) < 1e-5  # every difference has the same sign


def test_wilcoxon_on_zeros_and_ties_never_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(paired_wilcoxon([1.0, 2.0], [1.0, 2.0]))  # no non-zero difference
        assert math.isnan(paired_wilcoxon([np.nan], [1.0]))
        assert paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 2.5]) == pytest.approx(1.0)  # one difference left
        tied = paired_wilcoxon([1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 7, 9])
    assert 0 < tied < 1
    with pytest.raises(ValueError, match="differ in length"):
        paired_wilcoxon([1, 2], [1, 2, 3])


def test_mean_std_over_seeds():
    assert mean_std_over_seeds([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std, ddof 1
    mean, std = mean_std_over_seeds([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert mean_std_over_seeds([1.0, np.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert all(math.isnan(v) for v in mean_std_over_seeds([]))
