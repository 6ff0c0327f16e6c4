"""Ranking metrics (steps.ranking) against hand-computed values, ties and masks included."""

import itertools
import math

import pytest
import torch

from steps.ranking import kendall_tau, ndcg_at_k, ranking_metrics, regret_at_1, top1_hit

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
    for name in ("ndcg_at_1", "ndcg_at_3", "top1_hit", "regret_at_1", "kendall_tau"):
        assert close(const[name], float(many[name]), 1e-4), name


def test_metrics_are_0d_and_need_no_host_sync():
    """On the meta device (no data at all) every metric still builds: nothing reads a value."""
    pred = torch.randn(3, 5, device="meta")
    scores = torch.randn(3, 5, device="meta")
    for value in ranking_metrics(pred, scores).values():
        assert value.dim() == 0 and value.device.type == "meta"
