"""What ranking_v2 adds to a run's record: its split, its baselines, and the held-out test.

- At the start: metrics.json gains `split` (`{"train", "val", "test"}`: dataset indices of the
  data file) and `baselines` (random, popularity, oracle on the val lists); a synthetic data
  file is written to its cache (runs with a directory only; `engine check` writes nothing).
- At the end, once: the test lists are scored with the BEST weights (the best validation's,
  not the last epoch's) and metrics.json gains `test`: `{"model", "random", "popularity",
  "oracle"}`, each with every metric of `steps.ranking.METRICS`. The log shows a table of the
  best validation and the test, each beside its baselines.

The end is the last validation of a run that finishes (completed, early stopped, or a status a
study's `stop_when` gave): there the entry joins the run's final metrics.json write and the
table lands in train.log. A finished run that reaches FIT_END without it (a resume with no
epoch left to run) is evaluated at FIT_END; the engine's metrics writer runs after recipe
callbacks there, so the entry joins its final write too.
Interrupted and failed runs get no test figures (a resume finishes them).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

import steps
from engine import Event, add_metrics_entry, listens_to
from recipes.ranking_v2.baselines import (
    baselines_of,
    best_validation,
    heldout_baselines_of,
    summary_table,
)
from recipes.ranking_v2.data import ensure_data_file
from recipes.ranking_v2.loader import collate
from recipes.ranking_v2.model import unwrap
from steps.ranking import ranking_metrics

log = logging.getLogger("recipes.ranking_v2")

UNFINISHED = ("running", "interrupted", "failed")


@torch.no_grad()
def score_lists(model: torch.nn.Module, weights: dict, lists: Any, device: torch.device,
                batch_size: int, precision: str = "fp32") -> dict[str, float]:
    """Every ranking metric of `model` with `weights` on fixed candidate lists, as floats.

    A copy of the model is evaluated (the run's own is left as it is); the lists are read
    directly, in order, so no DataLoader draws from the global RNG."""
    net = copy.deepcopy(unwrap(model))
    net.load_state_dict(weights)
    net.eval()
    preds, scores = [], []
    for start in range(0, len(lists), batch_size):
        batch = steps.move_to_device(
            collate([lists[i] for i in range(start, min(start + batch_size, len(lists)))]),
            device)
        with steps.autocast(device, precision):
            pred = net(batch["dataset_tokens"], batch["dataset_mask"], batch["model_tokens"],
                       batch["model_mask"])
        preds.append(pred.float().cpu())
        scores.append(batch["scores"].cpu())
    figures = ranking_metrics(torch.cat(preds), torch.cat(scores))
    return {name: float(value) for name, value in figures.items()}


def test_figures(state: Any) -> dict[str, dict[str, float]] | None:
    """The `test` entry: the model with the best weights, then each baseline; None when there
    are no best weights yet."""
    run = state.run
    weights = state.best_weights
    if weights is None and run.run_dir is not None and (run.run_dir / "model.pt").exists():
        weights = torch.load(run.run_dir / "model.pt", weights_only=True, map_location="cpu")
    if weights is None:
        return None
    train = run.cfg.train
    model = score_lists(run.model, weights, run.loaders.val.dataset.held_out, run.device,
                        train.batch_size, train.precision)
    return {"model": model, **heldout_baselines_of(run.loaders)}


def _log_table(state: Any, test: dict | None) -> None:
    best = best_validation(state.history, state.best_epoch)
    if not best:
        return
    parts = {"val": {"model": best, **baselines_of(state.run.loaders)}}
    if test is not None:
        parts["test"] = test
    what = "and the held-out test " if test is not None else ""
    log.info("best validation (epoch %d) %sagainst the baselines:\n%s", state.best_epoch + 1,
             what, summary_table(parts))


def _ends_here(state: Any) -> bool:
    """This validation is the run's last, and the run finishes (not interrupted, not failed)."""
    return state.status != "running" or state.epoch >= state.run.cfg.train.epochs


@listens_to(Event.FIT_START, Event.VALIDATION_END, Event.FIT_END)
def report_callback(event: Event, state: Any) -> None:
    """Writes `split`, `baselines` and `test` to metrics.json and logs the final table."""
    run = state.run
    if run.rank != 0:
        return
    if event is Event.FIT_START:
        split = {"train": run.loaders.train.dataset.rows.tolist(),
                 "val": run.loaders.val.dataset.rows.tolist(),
                 "test": run.loaders.val.dataset.held_out.rows.tolist()}
        add_metrics_entry(run, "split", split)
        add_metrics_entry(run, "baselines", baselines_of(run.loaders))
        if run.run_dir is not None and run.cfg.data.path is None:
            _write_cache(run.cfg)
    elif event is Event.VALIDATION_END:
        if _ends_here(state):
            test = test_figures(state)
            if test is not None:
                add_metrics_entry(run, "test", test)   # in the FIT_END write of metrics.json
            _log_table(state, test)
    elif state.status in UNFINISHED:
        _log_table(state, None)
    elif "test" not in run.metrics_extra:
        test = test_figures(state)
        if test is not None:
            add_metrics_entry(run, "test", test)   # the metrics writer runs after us
        _log_table(state, test)


def _write_cache(cfg: Any) -> None:
    # a convenience (the next run reads the file instead of generating it): never a failure
    try:
        path = ensure_data_file(cfg)
    except Exception as exc:  # a UserError (unwritable folder) or an OSError: warn, go on
        log.warning("the synthetic data file was not cached: %s", exc)
        return
    log.debug("synthetic data file: %s", path)
