"""What a practitioner would do without the model, on the same validation lists:

- random: the expectation over uniformly random orders (computed exactly: a constant prediction
  makes every tie-aware metric in `steps.ranking` its random-order expectation);
- popularity: rank models by their mean TRAINING score (NaN ignored), the same for every dataset;
- oracle: rank by the true scores (the ceiling).

`baselines_callback` writes them to metrics.json as `baselines` when a run starts and logs the
best validation against them when it ends.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from engine import Event, add_metrics_entry, listens_to
from steps.ranking import ranking_metrics

log = logging.getLogger("recipes.ranking_v2")

METRICS = ("ndcg_at_1", "ndcg_at_3", "ndcg_at_5", "kendall_tau", "top1_hit", "regret_at_1")


def popularity(train_scores: torch.Tensor) -> torch.Tensor:
    """Each model's mean training score; a model never scored in training ranks last."""
    seen = torch.isfinite(train_scores)
    total = torch.where(seen, train_scores, torch.zeros_like(train_scores)).sum(0)
    mean = total / seen.sum(0).clamp(min=1)
    known = seen.any(0)
    floor = mean[known].min() - 1.0 if known.any() else torch.tensor(0.0)
    return torch.where(known, mean, floor)


def compute_baselines(train_scores: torch.Tensor, val_candidates: torch.Tensor,
                      val_scores: torch.Tensor) -> dict[str, dict[str, float]]:
    """Baseline metrics over validation lists.

    `train_scores` [n_train, M] (NaN = unknown), `val_candidates` [n_val, K] model indices,
    `val_scores` [n_val, K] the candidates' true scores (NaN = unknown).
    """
    observed = torch.isfinite(val_scores)
    preds = {
        "random": torch.zeros_like(val_scores),
        "popularity": popularity(train_scores)[val_candidates],
        "oracle": torch.where(observed, val_scores, torch.zeros_like(val_scores)),
    }
    return {name: {k: float(v) for k, v in ranking_metrics(pred, val_scores).items()}
            for name, pred in preds.items()}


def baselines_of(loaders: Any) -> dict[str, dict[str, float]]:
    """Baselines for a run's loaders (read from their datasets: no loader is iterated, so the
    global RNG, which an exact resume depends on, is left alone)."""
    train, val = loaders.train.dataset, loaders.val.dataset
    val_scores = torch.gather(val.scores, 1, val.candidates)
    return compute_baselines(train.scores, val.candidates, val_scores)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"


def summary_table(model: dict[str, float], baselines: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per metric, the model then each baseline."""
    names = ["model", *baselines]
    lines = [f"{'metric':<12}" + "".join(f"{n:>12}" for n in names)]
    for metric in METRICS:
        row = [model.get(metric)] + [b.get(metric) for b in baselines.values()]
        lines.append(f"{metric:<12}" + "".join(f"{_fmt(v):>12}" for v in row))
    return "\n".join(lines)


def best_validation(history: dict, best_epoch: int | None) -> dict[str, float]:
    """The `val_*` metrics (prefix dropped) of the best validation, or {} before any."""
    epochs = list(history.get("epoch", ()))
    if best_epoch is None or best_epoch not in epochs:
        return {}
    i = epochs.index(best_epoch)
    return {key[4:]: history[key][i] for key in history
            if key.startswith("val_") and history[key][i] is not None}


@listens_to(Event.FIT_START, Event.FIT_END)
def baselines_callback(event: Event, state: Any) -> None:
    """FIT_START: write `baselines` to metrics.json (runs with a directory).
    FIT_END: log the best validation against the baselines."""
    run = state.run
    if run.rank != 0:
        return
    if event is Event.FIT_START:
        if run.run_dir is not None:
            add_metrics_entry(run, "baselines", baselines_of(run.loaders))
        return
    best = best_validation(state.history, state.best_epoch)
    if best:
        log.info("best validation (epoch %d) against the baselines:\n%s", state.best_epoch + 1,
                 summary_table(best, baselines_of(run.loaders)))
