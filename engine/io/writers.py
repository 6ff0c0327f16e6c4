"""The standard writers: the observers `fit` adds to a run that has a run directory.

- `MetricsWriter`: config.toml at the start; metrics.json after every validation and at the end.
- `RunLog`: train.log through beautilog; a line per validation; the end-of-run summary.
- `ProgressBar` (engine.io.progress): tqdm over each epoch's steps with the loss and rate.
- `PlotWriter`: metrics.png at the end (and every few minutes on long runs).

Checkpoints (best.pt, last.pt, model.pt) are written by the checkpointer the loop is handed
(engine.io.checkpointer), at the points the loop decides; observers hear of each through
`Event.CHECKPOINT_WRITTEN`. A new writer is an observer added to `standard`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from engine.core.events import Event
from engine.io import runlog
from engine.io.files import atomic_write_text
from engine.io.metrics import read_metrics, write_metrics
from engine.io.progress import ProgressBar

LOG = logging.getLogger("engine")


def standard(run: Any) -> tuple:
    """The writers every run with a run directory gets."""
    from engine.io.trackers import trackers_for  # train.loggers: each imported when named
    return (MetricsWriter(), RunLog(), ProgressBar(), PlotWriter(), *trackers_for(run))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class MetricsWriter:
    """config.toml once; metrics.json (atomic) at the start, each validation, failure and end."""

    events = frozenset({Event.FIT_START, Event.VALIDATION_END, Event.FIT_END})

    def __call__(self, event: Event, state: Any) -> None:
        run = state.run
        if event is Event.FIT_START:
            from engine.io.layering import to_toml
            atomic_write_text(run.run_dir / "config.toml", to_toml(run.cfg))
        error = None
        if state.error:
            error = {k: state.error[k] for k in ("epoch", "step", "message")}
        write_metrics(run.run_dir, recipe=run.name, run_id=run.run_id, status=state.status,
                      history=state.history, best_epoch=state.best_epoch,
                      best_val_loss=state.best_val_loss, error=error,
                      extra=run.metrics_extra)


class RunLog:
    """train.log: the run's header, one line per validation, failures and the summary."""

    events = frozenset({Event.FIT_START, Event.VALIDATION_END, Event.CHECKPOINT_WRITTEN,
                        Event.FAILURE, Event.FIT_END})

    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, event: Event, state: Any) -> None:
        run, train = state.run, state.run.cfg.train
        if event is Event.FIT_START:
            runlog.start(run.run_dir)
            self.started = time.monotonic()
            params = sum(p.numel() for p in run.model.parameters())
            LOG.info("run %s of recipe %s: %d parameters on %s, %d epochs, batch size %d%s",
                     run.run_id, run.name, params, run.device, train.epochs, train.batch_size,
                     f", resuming at epoch {state.epoch + 1}" if state.epoch or state.step
                     else "")
        elif event is Event.VALIDATION_END:
            h = state.history
            extras = " ".join(f"{k}={_fmt(v[-1])}" for k, v in h.items()
                              if k.startswith("val_") and k != "val_loss")
            LOG.info("epoch %d/%d train_loss=%s val_loss=%s lr=%s %s%s", h["epoch"][-1] + 1,
                     train.epochs, _fmt(h["train_loss"][-1]), _fmt(h["val_loss"][-1]),
                     _fmt(h["learning_rate"][-1]), extras, "  (best)" if state.improved else "")
            if state.status == "early_stopped":
                LOG.info("early stopping: %d validations without improving by more than %s",
                         state.bad_validations, train.early_stopping_min_delta)
        elif event is Event.CHECKPOINT_WRITTEN:
            LOG.debug("checkpoint written: %s", state.checkpoint_path)
        elif event is Event.FAILURE:
            LOG.error("run failed at epoch %d, step %d: %s", state.error["epoch"] + 1,
                      state.error["step"] + 1, state.error["message"])
            if state.error.get("traceback"):
                runlog.write_to_file(run.run_dir, state.error["traceback"])
        elif event is Event.FIT_END:
            LOG.info("%s", summary(state, time.monotonic() - self.started))
            runlog.stop(run.run_dir)


def summary(state: Any, seconds: float) -> str:
    """The end-of-run summary: status, epochs, best validation and where the files are."""
    run = state.run
    h = state.history
    lines = [f"run {state.status}: {len(h.get('epoch', ()))} validations, {state.epoch} of "
             f"{run.cfg.train.epochs} epochs, {state.step} steps in {seconds:.1f} s"]
    if state.best_epoch is not None:
        i = list(h["epoch"]).index(state.best_epoch)
        figures = " ".join(f"{k}={_fmt(v[i])}" for k, v in h.items()
                           if k.startswith("val_"))
        lines.append(f"best: epoch {state.best_epoch + 1}: {figures}")
    lines.append(f"files: {run.run_dir}")
    return "\n".join(lines)


class PlotWriter:
    """metrics.png at the end of the run; on long runs also after a validation every 5 min."""

    events = frozenset({Event.VALIDATION_END, Event.FIT_END})
    every_seconds = 300.0

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, event: Event, state: Any) -> None:
        if event is Event.VALIDATION_END and time.monotonic() - self.last < self.every_seconds:
            return
        from engine.io.plots import plot_metrics
        run = state.run
        metrics = read_metrics(run.run_dir)
        if metrics.get("history", {}).get("epoch"):
            plot_metrics(run.run_dir / "metrics.png", metrics, f"{run.name} {run.run_id}")
        self.last = time.monotonic()
