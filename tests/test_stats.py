"""Statistics of comparisons (creativity_fast.stats; docs/calibration.md, "Statistics")."""

import math

import numpy as np
import pytest

from creativity_fast.stats import (bootstrap_median_ci, median_summary, per_seed_rows, summarize, win_fraction,
                                   wilson_interval)


def _coverage(level, draws=600, n=30, n_boot=1000):
    """Fraction of synthetic data sets (log-normal, true median 1) whose interval holds the true median."""
    rng = np.random.default_rng(2024)
    hits = 0
    for d in range(draws):
        x = np.exp(rng.normal(0.0, 0.5, size=n))
        lo, hi = bootstrap_median_ci(x, level=level, n_boot=n_boot, seed=d)
        hits += lo <= 1.0 <= hi
    return hits / draws


def test_bootstrap_interval_covers_the_true_median():
    # 600 draws: the standard error of a 0.95 coverage is 0.009. The band excludes both a
    # degenerate interval (coverage near 0) and an interval that is far too wide (near 1).
    assert 0.91 <= _coverage(0.95) <= 0.985
    # and the level means what it says: a 50% interval covers about half the time
    assert 0.38 <= _coverage(0.50) <= 0.62


def test_bootstrap_is_seeded_and_handles_edges():
    x = np.random.default_rng(0).normal(size=40)
    assert bootstrap_median_ci(x, seed=3) == bootstrap_median_ci(x, seed=3)
    # (with 10,000 resamples the quantiles settle on data points; a few resamples show the seed acts)
    assert bootstrap_median_ci(x, seed=3, n_boot=50) != bootstrap_median_ci(x, seed=4, n_boot=50)
    lo, hi = bootstrap_median_ci(x)
    assert lo < np.median(x) < hi
    assert bootstrap_median_ci([0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_median_ci([math.nan]))
    assert bootstrap_median_ci([1.0, math.nan, 1.0]) == (1.0, 1.0)  # NaN dropped
    with pytest.raises(ValueError, match="level"):
        bootstrap_median_ci(x, level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_median_ci(x, n_boot=0)


def test_wilson_interval_known_values():
    # textbook values (Wilson 1927; e.g. Newcombe 1998, Table I)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1.0, abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(4, 3)


def test_win_fraction_and_summary():
    a = np.array([0.9, 0.8, 0.7, math.nan, 0.5])
    b = np.array([0.5, 0.8, 0.6, 0.1, 0.6])
    w = win_fraction(a, b)
    assert (w["wins"], w["n"]) == (2, 4) and w["fraction"] == 0.5  # ties do not count; NaN dropped
    r = {"els": [0.9, 0.8, 0.95, 0.7], "ideal": [0.5, 0.85, 0.6, 0.2]}
    R2 = {"els": [0.8, 0.6, 0.9, -0.1], "ideal": [0.1, 0.7, 0.3, -1.0]}
    s = summarize(r, R2, n_boot=200)
    assert s["machines"]["els"]["r"]["median"] == pytest.approx(np.median(r["els"]))
    assert s["machines"]["els"]["r_squared"]["median"] == pytest.approx(np.median(np.square(r["els"])))
    assert s["machines"]["ideal"]["R2"]["median"] == pytest.approx(np.median(R2["ideal"]))
    assert set(s["versus"]) == {"els"} and s["versus"]["els"]["beats"]["wins"] == 3
    diff = np.array(r["els"]) - np.array(r["ideal"])
    assert s["versus"]["els"]["difference"]["median"] == pytest.approx(np.median(diff))
    assert summarize(r, R2, baseline=None, n_boot=10)["versus"] == {}
    assert median_summary([1.0, 2.0, 3.0], n_boot=10)["median"] == 2.0
    rows = per_seed_rows([4, 7, 9, 11], [None, 3, 0, 1], r, R2)
    assert rows[1]["class"] == 3 and rows[0]["class"] == ""
    assert rows[2]["r2_els"] == pytest.approx(0.95 ** 2) and rows[3]["R2_ideal"] == -1.0
