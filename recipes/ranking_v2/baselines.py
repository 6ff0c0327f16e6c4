"""What a practitioner would do without the model, on the same val or test lists:

- random: the expectation over uniformly random orders (computed exactly: a constant prediction
  makes every tie-aware metric in `steps.ranking` its random-order expectation; the two taus
  are 0, exact for weighted tau when the true scores have no ties);
- popularity: rank models by their mean TRAINING score (NaN ignored; training datasets only,
  never val or test), the same order for every dataset;
- oracle: rank by the true scores (the ceiling).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from steps.ranking import METRICS, ranking_metrics


def popularity(train_scores: torch.Tensor) -> torch.Tensor:
    """Each model's mean training score; a model never scored in training ranks last."""
    seen = torch.isfinite(train_scores)
    total = torch.where(seen, train_scores, torch.zeros_like(train_scores)).sum(0)
    mean = total / seen.sum(0).clamp(min=1)
    known = seen.any(0)
    floor = mean[known].min() - 1.0 if known.any() else torch.tensor(0.0)
    return torch.where(known, mean, floor)


def compute_baselines(train_scores: torch.Tensor, candidates: torch.Tensor,
                      scores: torch.Tensor) -> dict[str, dict[str, float]]:
    """Baseline metrics over fixed candidate lists.

    `train_scores` [n_train, M] (NaN = unknown), `candidates` [n, K] model indices, `scores`
    [n, K] the candidates' true scores (NaN = unknown).
    """
    observed = torch.isfinite(scores)
    preds = {
        "random": torch.zeros_like(scores),
        "popularity": popularity(train_scores)[candidates],
        "oracle": torch.where(observed, scores, torch.zeros_like(scores)),
    }
    return {name: {k: float(v) for k, v in ranking_metrics(pred, scores).items()}
            for name, pred in preds.items()}


def baselines_on(train: Any, lists: Any) -> dict[str, dict[str, float]]:
    """Baselines on fixed `lists` (a val or test CandidateLists), popularity from `train`."""
    return compute_baselines(train.scores, lists.candidates,
                             torch.gather(lists.scores, 1, lists.candidates))


def baselines_of(loaders: Any) -> dict[str, dict[str, float]]:
    """Validation baselines for a run's loaders (read from their datasets: no loader is
    iterated, so the global RNG, which an exact resume depends on, is left alone)."""
    return baselines_on(loaders.train.dataset, loaders.val.dataset)


def heldout_baselines_of(loaders: Any) -> dict[str, dict[str, float]]:
    """The same baselines on the held-out test lists."""
    return baselines_on(loaders.train.dataset, loaders.val.dataset.held_out)


def best_validation(history: dict, best_epoch: int | None) -> dict[str, float]:
    """The `val_*` metrics (prefix dropped) of the best validation, or {} before any."""
    epochs = list(history.get("epoch", ()))
    if best_epoch is None or best_epoch not in epochs:
        return {}
    i = epochs.index(best_epoch)
    return {key[4:]: history[key][i] for key in history
            if key.startswith("val_") and history[key][i] is not None}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"


def summary_table(parts: dict[str, dict[str, dict[str, float]]]) -> str:
    """A text table, one row per metric: for each part (`{"val": {"model": {...}, "random":
    {...}, ...}, "test": {...}}`) a column per ranker, headed by the part's name."""
    columns = [(part, name, figures) for part, rankers in parts.items()
               for name, figures in rankers.items()]
    width = 11
    head = "".join(f"{'  ' + part + ' ':-<{width * len(rankers)}}"
                   for part, rankers in parts.items())
    lines = [f"{'':<13}{head}", f"{'metric':<13}" + "".join(
        f"{name[:width - 1]:>{width}}" for _, name, _ in columns)]
    for metric in METRICS:
        lines.append(f"{metric:<13}" + "".join(f"{_fmt(figures.get(metric)):>{width}}"
                                               for _, _, figures in columns))
    return "\n".join(lines)
