"""Ranking losses (steps.ranking) against hand-computed values: ties, masks, one candidate."""

import math

import pytest
import torch

from steps.ranking import LOSSES, listmle_loss, listnet_loss, ranknet_loss, standardize_scores

NAN = float("nan")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    return abs(float(torch.as_tensor(a).detach()) - b) < tol


def test_listnet_two_candidates():
    """ListNet is the cross-entropy from softmax(scores) to softmax(pred)."""
    assert close(listnet_loss(t([0.0, 0.0]), t([1.0, 0.0])), math.log(2))
    p1 = math.e / (math.e + 1)
    expected = -(p1 * math.log(1 / (1 + math.exp(-2))) + (1 - p1) * math.log(
        1 / (1 + math.exp(2))))
    assert close(listnet_loss(t([2.0, 0.0]), t([1.0, 0.0])), expected)


def test_listnet_temperature_sharpens_the_target():
    """softmax(scores / T): T = 0.5 doubles the score gap."""
    p1 = math.exp(2) / (math.exp(2) + 1)
    expected = -(p1 * math.log(0.5) + (1 - p1) * math.log(0.5))
    assert close(listnet_loss(t([0.0, 0.0]), t([1.0, 0.0]), temperature=0.5), expected)
    assert close(listnet_loss(t([3.0, 0.0]), t([1.0, 0.0]), temperature=0.5),
                 -(p1 * math.log(1 / (1 + math.exp(-3))) + (1 - p1) * math.log(
                     1 / (1 + math.exp(3)))))


def test_listnet_ties_get_equal_mass():
    """Tied scores: target 1/2 each, loss -(log q1 + log q2) / 2."""
    q1 = 1 / (1 + math.exp(-1.0))
    assert close(listnet_loss(t([1.0, 0.0]), t([5.0, 5.0])),
                 -(math.log(q1) + math.log(1 - q1)) / 2)


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_candidate_costs_nothing(name):
    """A single candidate has nothing to rank: loss 0, finite gradient."""
    pred = torch.tensor([[3.0]], requires_grad=True)
    loss = LOSSES[name](pred, t([0.7]))
    loss.backward()
    assert close(loss, 0.0)
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_and_nan_candidates_are_ignored(name):
    """An unobserved (NaN) or masked-out candidate changes neither loss nor other gradients."""
    fn = LOSSES[name]
    base = fn(t([0.3, -0.2]), t([1.0, 0.0]))
    pred = torch.tensor([[0.3, -0.2, 9.0]], requires_grad=True)
    by_nan = fn(pred, t([1.0, 0.0, NAN]))
    by_nan.backward()
    assert close(by_nan, float(base))
    assert pred.grad[0, 2] == 0 and torch.isfinite(pred.grad).all()
    mask = torch.tensor([[True, True, False]])
    assert close(fn(t([0.3, -0.2, -9.0]), t([1.0, 0.0, 100.0]), mask), float(base))


@pytest.mark.parametrize("name", list(LOSSES))
def test_empty_rows_do_not_count(name):
    """A row with no observed candidate adds nothing to the batch mean (and no NaN)."""
    fn = LOSSES[name]
    alone = fn(t([0.5, 0.1, -0.3]), t([1.0, 2.0, 0.0]))
    pred = torch.zeros(2, 3, requires_grad=True)
    with torch.no_grad():
        pred[1] = torch.tensor([0.5, 0.1, -0.3])
    both = fn(pred, t([NAN, NAN, NAN], [1.0, 2.0, 0.0]))
    both.backward()
    assert close(both, float(alone))
    assert torch.isfinite(pred.grad).all() and (pred.grad[0] == 0).all()


def test_listmle_matches_plackett_luce():
    """No ties: the usual ListMLE; two items give log(1 + exp(p2 - p1)); three equal preds
    give log 3 + log 2."""
    assert close(listmle_loss(t([1.0, 2.0]), t([1.0, 0.0])), math.log(1 + math.e))
    assert close(listmle_loss(t([0.0, 0.0, 0.0]), t([3.0, 2.0, 1.0])), math.log(6))


def test_listmle_ties_use_breslow_sets():
    """Tied items all compete with each other: pred (1, 0) tied -> 2 log(e + 1) - 1, and the
    loss does not depend on the order of the tied columns."""
    assert close(listmle_loss(t([0.0, 0.0]), t([1.0, 1.0])), 2 * math.log(2))
    assert close(listmle_loss(t([1.0, 0.0]), t([1.0, 1.0])), 2 * math.log(math.e + 1) - 1)
    a = listmle_loss(t([0.4, -1.0, 2.0]), t([1.0, 1.0, 0.0]))
    b = listmle_loss(t([-1.0, 0.4, 2.0]), t([1.0, 1.0, 0.0]))
    assert close(a, float(b))


def test_ranknet_pairs_and_ties():
    """RankNet: BCE on sigmoid(p_i - p_j); a tied pair has target 1/2."""
    assert close(ranknet_loss(t([0.0, 0.0]), t([1.0, 0.0])), math.log(2))
    assert close(ranknet_loss(t([1.0, 0.0]), t([1.0, 0.0])), math.log(1 + math.exp(-1)))
    assert close(ranknet_loss(t([1.0, 0.0]), t([1.0, 1.0])),
                 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))))
    # three items, scores 3 > 2 > 1, pred (0, 1, 0): pairs (1,2) wrong by 1, (1,3) even, (2,3)
    # right by 1
    expected = (math.log(1 + math.e) + math.log(2) + math.log(1 + math.exp(-1))) / 3
    assert close(ranknet_loss(t([0.0, 1.0, 0.0]), t([3.0, 2.0, 1.0])), expected)


def test_ranknet_without_pairs_keeps_the_graph():
    """A batch with no pair at all gives 0 and still backpropagates (zeros)."""
    pred = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss = ranknet_loss(pred, t([1.0, NAN]))
    loss.backward()
    assert close(loss, 0.0) and (pred.grad == 0).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_prefer_the_true_order(name):
    """The right order costs less than the reversed one."""
    scores = t([3.0, 2.0, 1.0, 0.0])
    good = LOSSES[name](t([3.0, 2.0, 1.0, 0.0]), scores)
    bad = LOSSES[name](t([0.0, 1.0, 2.0, 3.0]), scores)
    assert float(good) < float(bad)


def test_standardize_scores_keeps_order_ties_and_masks():
    """Per-row z-scores over observed candidates; unobserved -> 0."""
    z = standardize_scores(t([1.0, 3.0, NAN, 3.0]))
    assert z[0, 2] == 0
    assert close(z[0, 1], float(z[0, 3])) and z[0, 0] < z[0, 1]
    seen = z[0, [0, 1, 3]]
    assert close(seen.mean(), 0.0) and close((seen ** 2).mean(), 1.0, 1e-4)
