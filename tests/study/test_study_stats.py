"""The study's statistics checked against scipy's own functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sp

from engine.study import stats

values = st.lists(st.floats(-100, 100, allow_nan=False).map(lambda v: round(v, 3)),
                  min_size=2, max_size=12)


@given(values)
def test_summary_matches_scipy(xs):
    """n, mean, sample std and the 95% t-interval as scipy computes them."""
    s = stats.summary(xs)
    assert s["n"] == len(xs)
    assert s["mean"] == pytest.approx(np.mean(xs), abs=1e-9)
    assert s["std"] == pytest.approx(np.std(xs, ddof=1), abs=1e-9)
    if np.std(xs) > 1e-6:   # scipy warns of lost precision for nearly equal values
        low, high = sp.ttest_1samp(xs, 0.0).confidence_interval(0.95)
        assert s["ci95"] == pytest.approx([low, high], rel=1e-9, abs=1e-9)


def test_one_value_has_no_spread():
    """n = 1: std and ci95 are null; n = 0: everything is."""
    assert stats.summary([2.0]) == {"n": 1, "mean": 2.0, "std": None, "ci95": None}
    assert stats.summary([])["mean"] is None


# quarters are exact in binary, so sums that tie are equal in both implementations (scipy's
# tie tolerance is relative to the observed statistic and misses rounding-level ties)
@given(st.lists(st.integers(-20, 20).map(lambda v: v / 4), min_size=2, max_size=8))
def test_exact_permutation_matches_scipy(diffs):
    """The exact paired permutation p-value equals scipy.stats.permutation_test's (every
    sign flip enumerated, two-sided, statistic the mean difference)."""
    if all(d == 0 for d in diffs):
        return
    ref = sp.permutation_test((np.array(diffs),), np.mean, permutation_type="samples",
                              n_resamples=math.inf, alternative="two-sided").pvalue
    assert stats.permutation_p(diffs) == pytest.approx(ref, rel=1e-9)


def test_many_pairs_use_wilcoxon_as_scipy_does():
    """Above ten pairs the test is scipy's Wilcoxon signed-rank."""
    rng = np.random.default_rng(0)
    best = rng.normal(0, 1, 15)
    other = best + rng.normal(0.8, 0.5, 15)
    result = stats.paired(list(other), list(best), "min")
    assert result["test"] == stats.WILCOXON
    assert result["p_value"] == pytest.approx(sp.wilcoxon(other - best).pvalue)
    assert result["verdict"] == "worse"
    assert result["mean_diff"] == pytest.approx(np.mean(other - best))


def test_direction_sign_and_verdicts():
    """mean_diff is positive when worse in the objective's direction; p < 0.05 is "worse"."""
    best = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    worse_min = [b + 1 + 0.1 * i for i, b in enumerate(best)]
    r = stats.paired(worse_min, best, "min")
    assert r["mean_diff"] > 0 and r["p_value"] == pytest.approx(2 / 64)
    assert r["verdict"] == "worse" and r["test"] == stats.PERMUTATION
    worse_max = [b - 1 for b in best]
    assert stats.paired(worse_max, best, "max")["mean_diff"] == pytest.approx(1.0)


def test_all_equal_pairs_are_not_distinguishable():
    """All-zero differences: p 1.0, not distinguishable (no warning, no NaN)."""
    r = stats.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "min")
    assert r["p_value"] == 1.0 and r["verdict"] == "not distinguishable"
    r = stats.paired([1.0] * 12, [1.0] * 12, "max")
    assert r["p_value"] == 1.0 and r["test"] == stats.WILCOXON


def test_fewer_than_two_pairs_give_no_comparison():
    assert stats.paired([1.0], [0.0], "min") is None
    assert stats.paired([], [], "min") is None


def test_smallest_p_says_when_no_verdict_is_possible():
    """Five pairs cannot reach p < 0.05 with the exact test; six can."""
    assert stats.smallest_p(5) == pytest.approx(0.0625)
    assert stats.smallest_p(6) == pytest.approx(0.03125)
    assert stats.smallest_p(3) == 0.25
    assert stats.smallest_p(12) < 0.05
