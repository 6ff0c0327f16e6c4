"""Ranking losses and metrics for batches of candidate lists, in pure torch.

Every function takes `[B, K]` tensors: one row per query (a dataset), one column per candidate
(a model). `pred` holds the model's scores (higher = better), `scores` the true scores (higher =
better, NaN where unknown), `mask` (optional, bool) marks the candidates that are real; the
candidates used are `mask & isfinite(scores)` ("observed"). Padding and unknown scores are thus
ignored everywhere (weighted tau on a row is scipy.stats.weightedtau on its observed entries).
A row with no observed candidate adds nothing to the batch means (no pair for the pairwise
loss). Nothing here reads a value on the host (`.item()`, `bool(tensor)`) or builds a tensor
from host data: losses and metrics stay on the device as 0-dim tensors, so a loop can read them
when it chooses (tests/steps/test_meta_device.py runs them all on the meta device).

Ties are part of the definitions, not an accident of `torch.sort`:
- in the true scores, ListNet gives tied candidates equal target mass, ListMLE uses Breslow's
  tie set (a tied candidate competes with every candidate tied with it), RankNet's target for a
  tied pair is 1/2;
- in the predictions, NDCG, top-1 hit, regret@1 and rel@1 are their expectation over a
  uniformly random order among the tied candidates, and the two taus count a tied pair neither
  way (tau-b). So a constant prediction gives the random-order expectation of every metric
  (the "random" baseline; for weighted tau exactly when the true scores have no ties), and
  the metrics never depend on the order of the columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def observed_mask(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Candidates that count: real (`mask`, all if None) and with a finite score."""
    seen = torch.isfinite(scores)
    return seen if mask is None else seen & mask.bool()


def _row_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per-row `values` over the `valid` rows (0 when none; no host sync)."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1).to(values.dtype)


def standardize_scores(scores: torch.Tensor, mask: torch.Tensor | None = None,
                       eps: float = 1e-6) -> torch.Tensor:
    """Per-row z-scores over the observed candidates (order and ties kept; unobserved -> 0).

    Makes a softmax target (ListNet) independent of the scale of a file's scores: fine-tuning
    accuracies that differ by 0.01 and losses that differ by 10 rank alike.
    """
    m = observed_mask(scores, mask)
    w = m.to(scores.dtype)
    s = torch.where(m, scores, torch.zeros_like(scores))
    n = w.sum(-1, keepdim=True).clamp(min=1.0)
    mean = s.sum(-1, keepdim=True) / n
    var = (((s - mean) * w) ** 2).sum(-1, keepdim=True) / n
    return torch.where(m, (s - mean) / (var.sqrt() + eps), torch.zeros_like(s))


# --- losses ---------------------------------------------------------------------------------

def listnet_loss(pred: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
    """ListNet (top-one): cross-entropy from softmax(scores / temperature) to softmax(pred).

    Per row, over observed candidates: `-sum_i P_i log Q_i` with `P = softmax(s / T)` and
    `Q = softmax(pred)`; tied scores get equal target mass. Mean over rows with at least one
    observed candidate. One candidate: P = Q = 1, loss 0.
    """
    m = observed_mask(scores, mask)
    valid = m.any(-1)
    m = m | ~valid[:, None]  # an empty row computes on all columns, then gets weight 0
    # a Python scalar fill: no tensor made from host data, so no host-to-device copy per step
    target = (scores.nan_to_num(0.0) / temperature).masked_fill(~m, float("-inf"))
    p = torch.softmax(target, dim=-1)
    log_q = torch.log_softmax(pred.masked_fill(~m, float("-inf")), dim=-1)
    per_row = -torch.where(m, p * torch.where(m, log_q, 0.0), 0.0).sum(-1)
    return _row_mean(per_row, valid)


def listmle_loss(pred: torch.Tensor, scores: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """ListMLE: negative Plackett-Luce log-likelihood of the true order, Breslow for ties.

    Per row: `sum_i [log sum_{j: s_j <= s_i} exp(pred_j) - pred_i]` over observed i and j. With
    no ties this is the usual ListMLE (candidate i competes with itself and every worse one);
    candidates with equal scores all compete with each other, so the loss does not depend on how
    ties would be ordered. Mean over rows with an observed candidate. One candidate: 0.
    """
    m = observed_mask(scores, mask)
    valid = m.any(-1)
    s = torch.where(m, scores, torch.zeros_like(scores))
    # competes[b, i, j]: j is observed and not strictly better than i
    competes = m[:, None, :] & (s[:, None, :] <= s[:, :, None])
    logits = pred[:, None, :].expand_as(competes)
    logits = logits.masked_fill(~competes, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # -inf only for unobserved i
    terms = torch.where(m, lse - pred, torch.zeros_like(pred))
    return _row_mean(terms.sum(-1), valid)


def ranknet_loss(pred: torch.Tensor, scores: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet: logistic loss on every pair of observed candidates.

    For the pair (i, j) the model's probability that i beats j is `sigmoid(pred_i - pred_j)`,
    the target is 1 if `s_i > s_j`, 0 if `s_i < s_j` and 1/2 for a tie; the loss is their
    binary cross-entropy, averaged over the pairs of a row (each unordered pair once; the
    ordered mean is the same since the loss is symmetric), then over rows with a pair. A row
    with one candidate has no pair and adds nothing; a batch with no pair gives 0.
    """
    m = observed_mask(scores, mask)
    s = torch.where(m, scores, torch.zeros_like(scores))
    k = pred.shape[-1]
    off_diag = ~torch.eye(k, dtype=torch.bool, device=pred.device)
    pairs = m[:, :, None] & m[:, None, :] & off_diag
    diff = pred[:, :, None] - pred[:, None, :]
    target = (torch.sign(s[:, :, None] - s[:, None, :]) + 1.0) / 2.0
    bce = F.binary_cross_entropy_with_logits(diff, target, reduction="none")
    count = pairs.sum((-1, -2))
    per_row = torch.where(pairs, bce, 0.0).sum((-1, -2)) / count.clamp(min=1)
    return _row_mean(per_row, count > 0) + 0.0 * pred.sum()  # keep the graph when no pair


LOSSES = {"listnet": listnet_loss, "listmle": listmle_loss, "ranknet": ranknet_loss}


# --- metrics --------------------------------------------------------------------------------

def _pred_positions(pred: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each candidate: how many observed candidates the model puts strictly above it, and
    how many it ties with (itself included). Under random tie-breaking its 1-based position is
    uniform over `above + 1 .. above + tied`."""
    both = m[:, None, :]
    above = (both & (pred[:, None, :] > pred[:, :, None])).sum(-1)
    tied = (both & (pred[:, None, :] == pred[:, :, None])).sum(-1).clamp(min=1)
    return above, tied


def _gains(scores: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Gains for NDCG: each observed score minus the row's lowest observed score (so >= 0;
    the worst candidate gains 0, and a near-tie between two candidates costs little)."""
    big = torch.finfo(scores.dtype).max
    low = torch.where(m, scores, torch.full_like(scores, big)).amin(-1, keepdim=True)
    return torch.where(m, scores - low, torch.zeros_like(scores))


def ndcg_at_k(pred: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None = None,
              k: int = 5) -> torch.Tensor:
    """NDCG@k with the scores as gains, over observed candidates; mean over rows.

    `gain_i = s_i - min_j s_j` (per row, observed j), discount `1 / log2(1 + position)` for
    positions 1..k and 0 beyond. `DCG@k = sum_i gain_i * E[discount(position_i)]`, the
    expectation over random orders of prediction ties; `NDCG@k = DCG@k / IDCG@k`, IDCG from the
    gains sorted by the true scores. A row whose gains are all 0 (one candidate, or all tied)
    scores 1: every order is ideal.
    """
    m = observed_mask(scores, mask)
    valid = m.any(-1)
    gains = _gains(scores, m)
    kk = pred.shape[-1]
    positions = torch.arange(1, kk + 1, dtype=gains.dtype, device=gains.device)
    discount = torch.where(positions <= k, 1.0 / torch.log2(positions + 1.0), 0.0)
    cum = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # cum[n] = sum of first n
    above, tied = _pred_positions(pred, m)
    expected = (cum[above + tied] - cum[above]) / tied
    dcg = (gains * expected).sum(-1)
    ideal = (gains.sort(-1, descending=True).values * discount).sum(-1)
    ndcg = torch.where(ideal > 0, dcg / ideal.clamp(min=torch.finfo(gains.dtype).tiny), 1.0)
    return _row_mean(ndcg, valid)


def _top1(pred: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None):
    m = observed_mask(scores, mask)
    valid = m.any(-1)
    above, tied = _pred_positions(pred, m)
    # each candidate the model ties at the top is picked with probability 1 / tied
    pick = torch.where(m & (above == 0), 1.0 / tied.to(scores.dtype), 0.0)
    s = torch.where(m, scores, torch.zeros_like(scores))
    best = torch.where(m, scores, torch.full_like(scores, float("-inf"))).amax(-1, keepdim=True)
    best = torch.where(valid[:, None], best, torch.zeros_like(best))
    return m, valid, pick, s, best


def top1_hit(pred: torch.Tensor, scores: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Probability that the model's first pick has the best true score (any of tied bests),
    picking uniformly among the candidates it ties at the top; mean over rows."""
    m, valid, pick, s, best = _top1(pred, scores, mask)
    hit = (pick * (m & (s == best)).to(pick.dtype)).sum(-1)
    return _row_mean(hit, valid)


def regret_at_1(pred: torch.Tensor, scores: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """The best observed score minus the (expected) score of the model's first pick; lower is
    better, 0 for a perfect pick; mean over rows."""
    _, valid, pick, s, best = _top1(pred, scores, mask)
    regret = best[:, 0] - (pick * s).sum(-1)
    return _row_mean(regret, valid)


def _pair_signs(pred: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None):
    """Observed rows, masked scores, the observed ordered pairs and their sign products."""
    m = observed_mask(scores, mask)
    s = torch.where(m, scores, torch.zeros_like(scores))
    k = pred.shape[-1]
    pairs = m[:, :, None] & m[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=pred.device)
    dp = torch.sign(pred[:, :, None] - pred[:, None, :])
    ds = torch.sign(s[:, :, None] - s[:, None, :])
    return m, s, pairs.to(s.dtype), dp, ds


def _tau(agree: torch.Tensor, dp: torch.Tensor, ds: torch.Tensor, w: torch.Tensor):
    """sum w * sign product / sqrt(weight of pairs untied in pred * untied in scores), with 0
    where undefined (either side all tied), clamped to [-1, 1] as scipy does."""
    num = (agree * w).sum((-1, -2))
    denom = (((dp != 0).to(w.dtype) * w).sum((-1, -2)) * ((ds != 0).to(w.dtype) * w).sum(
        (-1, -2))).sqrt()
    return torch.where(denom > 0, num / denom.clamp(min=1e-12), 0.0).clamp(-1.0, 1.0)


def kendall_tau(pred: torch.Tensor, scores: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Kendall's tau-b between `pred` and the true scores over observed candidates, mean over
    rows: `(concordant - discordant) / sqrt((n0 - n_pred_ties) (n0 - n_score_ties))` with n0
    the number of pairs. A row where either side is all tied (or has one candidate) has no
    defined tau and counts as 0, the expectation under a random order."""
    m, _, w, dp, ds = _pair_signs(pred, scores, mask)
    # ordered pairs count every unordered pair twice; the factors of 2 cancel in the ratio
    return _row_mean(_tau(dp * ds, dp, ds, w), m.any(-1))


def _lex_ranks(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Each observed candidate's 0-based position when sorted by `a` decreasing, ties by `b`
    decreasing, then by column (the order of candidates tied in both changes nothing)."""
    col = torch.arange(a.shape[-1], device=a.device)
    earlier = col[None, :] < col[:, None]  # [i, j]: j comes before i
    a_i, a_j, b_i, b_j = a[:, :, None], a[:, None, :], b[:, :, None], b[:, None, :]
    ahead = (a_j > a_i) | ((a_j == a_i) & ((b_j > b_i) | ((b_j == b_i) & earlier)))
    return (m[:, None, :] & ahead).sum(-1)


def weighted_tau(pred: torch.Tensor, scores: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Vigna's weighted Kendall tau, as `scipy.stats.weightedtau(pred, scores)` computes it by
    default, over the observed candidates of each row; mean over rows.

    A pair (i, j) weighs `1/(r_i + 1) + 1/(r_j + 1)` (hyperbolic weigher, additive), r the
    0-based rank, so swaps near the top cost most; `tau_r = sum w sign(dp) sign(ds) /
    sqrt(sum_{pred untied} w * sum_{scores untied} w)` (ties as in tau-b). scipy's default
    (`rank=True`) averages two rankings: by pred decreasing (ties by score), and by score
    decreasing (ties by pred); so does this. Unknown (NaN) scores and masked candidates are
    dropped, like `scipy.stats.weightedtau(pred[seen], scores[seen])`; a row where either side
    is all tied (or with one candidate), where scipy returns NaN, counts as 0.
    """
    m, s, w, dp, ds = _pair_signs(pred, scores, mask)
    agree = dp * ds
    taus = []
    for rank in (_lex_ranks(pred, s, m), _lex_ranks(s, pred, m)):
        h = 1.0 / (rank.to(s.dtype) + 1.0)
        taus.append(_tau(agree, dp, ds, w * (h[:, :, None] + h[:, None, :])))
    return _row_mean((taus[0] + taus[1]) / 2, m.any(-1))


def rel_at_1(pred: torch.Tensor, scores: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """The (expected) true score of the model's first pick over the best observed score: 1 for
    a perfect pick; mean over rows. Meant for positive scores (accuracies): a row whose best
    observed score is not above 0 has no ratio and is left out of the mean."""
    _, valid, pick, s, best = _top1(pred, scores, mask)
    best = best[:, 0]
    ratio = (pick * s).sum(-1) / best.clamp(min=torch.finfo(s.dtype).tiny)
    return _row_mean(ratio, valid & (best > 0))


METRICS = ("ndcg_at_1", "ndcg_at_3", "ndcg_at_5", "weighted_tau", "kendall_tau", "top1_hit",
           "regret_at_1", "rel_at_1")


def ranking_metrics(pred: torch.Tensor, scores: torch.Tensor,
                    mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The ranking figures a validation logs (`METRICS`): NDCG@1/3/5, weighted and plain
    Kendall's tau, top-1 hit, regret@1 and the relative score of the top pick."""
    pred = pred.detach()
    out = {f"ndcg_at_{k}": ndcg_at_k(pred, scores, mask, k) for k in (1, 3, 5)}
    out["weighted_tau"] = weighted_tau(pred, scores, mask)
    out["kendall_tau"] = kendall_tau(pred, scores, mask)
    out["top1_hit"] = top1_hit(pred, scores, mask)
    out["regret_at_1"] = regret_at_1(pred, scores, mask)
    out["rel_at_1"] = rel_at_1(pred, scores, mask)
    return out
