"""Ranking metrics (steps.ranking) against hand-computed values, ties and masks included."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from steps.ranking import (
    METRICS,
    kendall_tau,
    ndcg_at_k,
    ranking_metrics,
    regret_at_1,
    rel_at_1,
    top1_hit,
    weighted_tau,
)

NAN = float("nan")
L3 = 1 / math.log2(3)  # discount of position 2


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    return abs(float(torch.as_tensor(a).detach()) - b) < tol


def test_ndcg_perfect_and_reversed():
    """Gains are scores minus the row minimum: (2, 1, 0) for scores (3, 2, 1)."""
    scores = t([3.0, 2.0, 1.0])
    assert close(ndcg_at_k(t([3.0, 2.0, 1.0]), scores, k=3), 1.0)
    ideal = 2 + L3
    assert close(ndcg_at_k(t([1.0, 2.0, 3.0]), scores, k=3), (L3 + 2 / 2) / ideal)
    assert close(ndcg_at_k(t([1.0, 2.0, 3.0]), scores, k=1), 0.0)
    assert close(ndcg_at_k(t([2.0, 3.0, 1.0]), scores, k=1), 0.5)


def test_ndcg_near_tie_costs_little():
    """Picking a model 0.01 below the best costs 1% of NDCG@1, not all of it."""
    assert close(ndcg_at_k(t([0.0, 1.0, -1.0]), t([1.0, 0.99, 0.0]), k=1), 0.99)


def test_ndcg_prediction_ties_are_averaged():
    """Tied predictions: the expectation over their orders (constant pred, gains 2, 1, 0)."""
    scores = t([3.0, 2.0, 1.0])
    assert close(ndcg_at_k(t([0.0, 0.0, 0.0]), scores, k=1), 0.5)
    assert close(ndcg_at_k(t([0.0, 0.0, 0.0]), scores, k=3), (1 + L3 + 0.5) / (2 + L3))
    # first two tied at the top: position 1 or 2 each with probability 1/2
    assert close(ndcg_at_k(t([5.0, 5.0, 0.0]), scores, k=1), (2 * 0.5 + 1 * 0.5) / 2)


def test_ndcg_degenerate_rows_score_one():
    """One candidate, or all scores equal: every order is ideal."""
    assert close(ndcg_at_k(t([1.0]), t([0.3]), k=5), 1.0)
    assert close(ndcg_at_k(t([1.0, 0.0]), t([0.3, 0.3]), k=5), 1.0)


def test_metrics_ignore_unobserved_and_masked_candidates():
    """A NaN-scored or masked candidate with the highest prediction is not 'picked'."""
    pred = t([9.0, 1.0, 0.0])
    by_nan = ranking_metrics(pred, t([NAN, 1.0, 0.0]))
    by_mask = ranking_metrics(pred, t([5.0, 1.0, 0.0]), torch.tensor([[False, True, True]]))
    for m in (by_nan, by_mask):
        assert close(m["ndcg_at_1"], 1.0) and close(m["top1_hit"], 1.0)
        assert close(m["regret_at_1"], 0.0) and close(m["kendall_tau"], 1.0)


def test_kendall_tau_b():
    """tau-b: perfect 1, reversed -1, one discordant pair of three 1/3, prediction ties."""
    s = t([3.0, 2.0, 1.0])
    assert close(kendall_tau(t([3.0, 2.0, 1.0]), s), 1.0)
    assert close(kendall_tau(t([1.0, 2.0, 3.0]), s), -1.0)
    assert close(kendall_tau(t([2.0, 3.0, 1.0]), s), 1 / 3)
    # pred ties on (1, 2): C - D = 2, n0 = 3, one pred tie, no score tie
    assert close(kendall_tau(t([1.0, 1.0, 0.0]), s), 2 / math.sqrt(2 * 3))
    assert close(kendall_tau(t([0.0, 0.0, 0.0]), s), 0.0)  # undefined -> 0
    assert close(kendall_tau(t([1.0]), t([1.0])), 0.0)


def test_top1_hit_and_regret():
    """The pick is uniform among the tied top predictions; any of the tied best is a hit."""
    s = t([0.9, 0.5, 0.1])
    assert close(top1_hit(t([0.0, 0.0, 1.0]), s), 0.0)
    assert close(regret_at_1(t([0.0, 0.0, 1.0]), s), 0.8)
    assert close(top1_hit(t([1.0, 1.0, 0.0]), s), 0.5)
    assert close(regret_at_1(t([1.0, 1.0, 0.0]), s), 0.9 - 0.7)
    assert close(top1_hit(t([0.0, 1.0, 0.0]), t([1.0, 1.0, 0.0])), 1.0)
    assert close(regret_at_1(t([0.0, 1.0, 0.0]), t([1.0, 1.0, 0.0])), 0.0)


def test_batch_mean_skips_empty_rows():
    """Per-row values averaged over rows with an observed candidate."""
    pred = t([1.0, 0.0], [0.0, 1.0], [0.0, 0.0])
    scores = t([1.0, 0.0], [1.0, 0.0], [NAN, NAN])
    m = ranking_metrics(pred, scores)
    assert close(m["top1_hit"], 0.5) and close(m["regret_at_1"], 0.5)
    assert close(m["kendall_tau"], 0.0) and close(m["ndcg_at_1"], 0.5)


@pytest.mark.parametrize("scores", [[4.0, 1.0, 3.0, 3.0], [0.2, 0.9, 0.5, 0.1]])
def test_constant_prediction_is_the_random_order_expectation(scores):
    """A constant prediction gives exactly the mean of each metric over all K! orders."""
    s = t(scores)
    perms = list(itertools.permutations(range(4)))
    many = ranking_metrics(torch.tensor(perms, dtype=torch.float32), s.expand(len(perms), 4))
    const = ranking_metrics(torch.zeros(1, 4), s)
    for name in ("ndcg_at_1", "ndcg_at_3", "top1_hit", "regret_at_1", "kendall_tau",
                 "rel_at_1"):
        assert close(const[name], float(many[name]), 1e-4), name


def test_weighted_tau_of_random_orders_averages_to_zero():
    """Without ties in the true scores, weighted tau over all K! orders averages to 0, the
    value a constant prediction (the random baseline) gets."""
    s = t([0.2, 0.9, 0.5, 0.1])
    perms = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.float32)
    assert close(weighted_tau(perms, s.expand(len(perms), 4)), 0.0, 1e-6)
    assert close(weighted_tau(torch.zeros(1, 4), s), 0.0)


def _scipy_row(pred: np.ndarray, scores: np.ndarray) -> float:
    """scipy's weightedtau on the known scores; its NaN (undefined) read as 0."""
    seen = ~np.isnan(scores)
    if seen.sum() < 2:
        return 0.0
    value = scipy.stats.weightedtau(pred[seen], scores[seen]).statistic
    return 0.0 if np.isnan(value) else float(value)


def _random_row(rng: np.random.Generator, k: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous values, or few distinct ones (ties) on either side; some NaN scores."""
    pred = rng.integers(0, 3, k).astype(float) if i % 2 else rng.normal(size=k)
    scores = rng.integers(0, 3, k).astype(float) if i % 3 == 0 else rng.random(k)
    if i % 4 == 0:
        scores[rng.random(k) < 0.3] = np.nan
    return pred, scores


def test_weighted_tau_matches_scipy_row_by_row():
    """Row by row, on random lists with ties and NaN scores: scipy.stats.weightedtau's default
    (hyperbolic weigher, additive, rank=True), with NaN scores dropped, to 1e-9."""
    rng = np.random.default_rng(0)
    for i in range(300):
        pred, scores = _random_row(rng, int(rng.integers(1, 10)), i)
        ours = weighted_tau(torch.tensor(pred)[None], torch.tensor(scores)[None])
        assert abs(float(ours) - _scipy_row(pred, scores)) < 1e-9, (pred, scores)


def test_weighted_tau_over_a_batch_is_the_mean_of_rows():
    """A padded batch (mask, NaN, an all-NaN row) gives the mean of scipy's per-row values
    over rows with a known score; float32 agrees to 1e-5."""
    rng = np.random.default_rng(1)
    k = 8
    rows = [_random_row(rng, k, i) for i in range(40)]
    pred = np.stack([p for p, _ in rows])
    scores = np.stack([s for _, s in rows])
    scores[5] = np.nan
    mask = rng.random((40, k)) > 0.2
    dropped = np.where(mask, scores, np.nan)
    expected = [_scipy_row(p, s) for p, s in zip(pred, dropped, strict=True)
                if (~np.isnan(s)).any()]
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        ours = weighted_tau(torch.tensor(pred, dtype=dtype), torch.tensor(scores, dtype=dtype),
                            torch.tensor(mask))
        assert abs(float(ours) - float(np.mean(expected))) < tol


def test_weighted_tau_weighs_the_top():
    """A swap of the two best costs more than a swap of the two worst; perfect 1, reversed
    -1; symmetric in its arguments (scipy's rank=True averages both rankings)."""
    s = t([4.0, 3.0, 2.0, 1.0, 0.0])
    top = weighted_tau(t([3.0, 4.0, 2.0, 1.0, 0.0]), s)
    bottom = weighted_tau(t([4.0, 3.0, 2.0, 0.0, 1.0]), s)
    assert float(top) < float(bottom) < 1.0
    assert close(weighted_tau(s, s), 1.0) and close(weighted_tau(-s, s), -1.0)
    a, b = t([0.3, 0.1, 0.9, 0.4]), t([1.0, 2.0, 0.5, 0.7])
    assert close(weighted_tau(a, b), float(weighted_tau(b, a)))


def test_rel_at_1():
    """The pick's true score over the best one; ties at the top averaged; rows whose best
    score is not positive are left out."""
    s = t([0.9, 0.45, 0.1])
    assert close(rel_at_1(t([0.0, 1.0, 0.0]), s), 0.5)
    assert close(rel_at_1(t([1.0, 1.0, 0.0]), s), (0.9 + 0.45) / 2 / 0.9)
    assert close(rel_at_1(t([2.0, 1.0, 0.0]), s), 1.0)
    assert close(rel_at_1(t([0.0, 1.0], [1.0, 0.0]), t([0.8, 0.4], [-1.0, -2.0])), 0.5)
    assert close(rel_at_1(t([9.0, 1.0]), t([NAN, 0.4])), 1.0)


def test_ranking_metrics_reports_every_metric():
    """ranking_metrics returns exactly METRICS, each a 0-dim tensor."""
    out = ranking_metrics(torch.randn(4, 6), torch.rand(4, 6))
    assert tuple(out) == METRICS and all(v.dim() == 0 for v in out.values())


def test_metrics_are_0d_and_need_no_host_sync():
    """On the meta device (no data at all) every metric still builds: nothing reads a value."""
    pred = torch.randn(3, 5, device="meta")
    scores = torch.randn(3, 5, device="meta")
    for value in ranking_metrics(pred, scores).values():
        assert value.dim() == 0 and value.device.type == "meta"
