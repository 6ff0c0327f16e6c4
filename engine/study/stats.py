"""The statistics of a study: a configuration's mean and its 95% interval, and whether it is
worse than the best beyond replicate noise (a paired test by replicate).

- `summary(values)`: n, mean, sample std (ddof 1), 95% t-interval of the mean; std and ci95
  are None with fewer than two values.
- `paired(values, best)`: differences signed so that positive = worse than the best; an exact
  paired permutation test (all 2^n sign flips of the differences) for up to EXACT_PAIRS pairs,
  Wilcoxon signed-rank above; all-equal pairs give p 1.0. Verdict "worse" when p < 0.05, else
  "not distinguishable".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sp

ALPHA = 0.05
EXACT_PAIRS = 10
PERMUTATION = "exact paired permutation"
WILCOXON = "wilcoxon signed-rank"


def t_interval(values: Sequence[float]) -> list[float] | None:
    """95% t-interval of the mean (None with fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(sp.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return [mean - half, mean + half]


def summary(values: Sequence[float]) -> dict:
    """{"n", "mean", "std", "ci95"} of a configuration's values."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    return {"n": n, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if n > 1 else None, "ci95": t_interval(values)}


def permutation_p(diffs: Sequence[float]) -> float:
    """Two-sided exact p-value of a paired permutation test on the mean difference: the share
    of the 2^n sign flips whose |sum| is at least the observed one."""
    d = np.asarray(diffs, dtype=float)
    observed = abs(d.sum())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    sums = np.abs(signs @ d)
    # a relative tolerance: flips that equal the observed sum up to rounding count as extreme
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))
    return float(np.mean(sums >= observed - tol))


def smallest_p(pairs: int) -> float:
    """The smallest two-sided p-value the test used for `pairs` pairs can give."""
    if pairs <= EXACT_PAIRS:
        return 2.0 / 2 ** pairs
    return float(sp.wilcoxon(np.arange(1.0, pairs + 1)).pvalue)


def paired(values: Sequence[float], best: Sequence[float], direction: str) -> dict | None:
    """A configuration against the best, paired by replicate (the two lists in replicate
    order, same length); None with fewer than two pairs."""
    n = len(values)
    if n < 2:
        return None
    sign = 1.0 if direction == "min" else -1.0
    diffs = [sign * (v - b) for v, b in zip(values, best)]   # positive: worse than the best
    if all(d == 0 for d in diffs):
        p, test = 1.0, PERMUTATION if n <= EXACT_PAIRS else WILCOXON
    elif n <= EXACT_PAIRS:
        p, test = permutation_p(diffs), PERMUTATION
    else:
        p, test = float(sp.wilcoxon(diffs).pvalue), WILCOXON
    ci = t_interval(diffs)
    return {"mean_diff": float(np.mean(diffs)), "ci95": ci, "p_value": p, "test": test,
            "pairs": n, "verdict": "worse" if p < ALPHA else "not distinguishable"}
