"""The standard writers: the observers `fit` adds to a run that has a run directory.

- `MetricsWriter`: config.toml at the start; metrics.json after every validation and at the end.
- `RunLog`: train.log through beautilog; a line per validation; the end-of-run summary.
- `ProgressBar` (engine.io.progress): tqdm over each epoch's steps with the loss and rate.
- `PlotWriter`: metrics.png while training (paced) and at the end, drawn by a helper process.

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
from engine.core.state import history_lists
from engine.io import plot_service, runlog
from engine.io.files import atomic_write_text
from engine.io.layering import to_toml
from engine.io.metrics import write_metrics
from engine.io.progress import ProgressBar

LOG = logging.getLogger("engine")


def standard(run: Any) -> tuple[tuple, tuple]:
    """The writers every run with a run directory gets, as (first, last): `fit` puts the
    recipe's and the caller's callbacks between them, so train.log is open for whatever they
    log, from FIT_START to FIT_END, and metrics.json holds what they add at any event. The
    trackers `train.loggers` names come last (each library imported only when named)."""
    from engine.io.trackers import trackers_for  # deferred: start-up time, see above
    log = RunLog()
    return (log,), (MetricsWriter(), ProgressBar(), PlotWriter(), *trackers_for(run),
                    log.closer)


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
            config = to_toml(run.cfg)
            if run.files is None:
                atomic_write_text(run.run_dir / "config.toml", config)
            else:   # by the run's writer, before the first metrics.json: no fsync wait here
                run.files.write(run.run_dir / "config.toml", config.encode("utf-8"))
        error = None
        if state.error:
            error = {k: state.error[k] for k in ("epoch", "step", "message")}
        write_metrics(run.run_dir, recipe=run.name, run_id=run.run_id, status=state.status,
                      history=state.history, best_epoch=state.best_epoch,
                      best_val_loss=state.best_val_loss, error=error,
                      extra=run.metrics_extra, files=run.files)


class RunLog:
    """train.log: the run's header, one line per validation, failures and the summary."""

    # not CHECKPOINT_WRITTEN: an observer of it makes checkpoint writes wait for the disk
    events = frozenset({Event.FIT_START, Event.VALIDATION_END, Event.FAILURE})

    def __init__(self) -> None:
        self.started = 0.0

        def closer(event: Event, state: Any) -> None:
            """FIT_END, after every other observer: the summary, then train.log closes."""
            LOG.info("%s", summary(state, time.monotonic() - self.started))
            runlog.stop(state.run.run_dir)

        closer.events = frozenset({Event.FIT_END})
        self.closer = closer

    def __call__(self, event: Event, state: Any) -> None:
        run, train = state.run, state.run.cfg.train
        if event is Event.FIT_START:
            runlog.start(run.run_dir, run.files)
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
        elif event is Event.FAILURE:
            LOG.error("run failed at epoch %d, step %d: %s", state.error["epoch"] + 1,
                      state.error["step"] + 1, state.error["message"])
            if state.error.get("traceback"):
                runlog.write_to_file(run.run_dir, state.error["traceback"])


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
    """metrics.png after validations and at the end, drawn by the plot helper process
    (engine.io.plot_service): training never waits for a figure; the final one is on disk
    when `python -m engine run` returns (or after `wait_for_plots()`).

    Frames while training are paced: the first one no sooner than `FIRST_FRAME_S` after the
    run starts, then at most one every `FRAME_EVERY_S`. A frame drawn on the other core slows
    a short fit around it (10% of a 0.3 s fit here, benchmarks/README.md), and a run that ends
    within seconds gets its final frame at once anyway; a long run's figure still follows its
    validations, and the history is not serialised for frames the helper would skip."""

    events = frozenset({Event.FIT_START, Event.VALIDATION_END, Event.FIT_END})
    FIRST_FRAME_S = 2.0
    FRAME_EVERY_S = 1.0
    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.next_frame = 0.0   # the clock's time from which a frame while training is sent

    def __call__(self, event: Event, state: Any) -> None:
        run = state.run
        if event is Event.FIT_START:
            plot_service.service().warm()   # matplotlib loads in the helper while we train
            self.next_frame = self.clock() + self.FIRST_FRAME_S
            return
        final = event is Event.FIT_END
        if not state.history.get("epoch"):
            return
        if not final:
            now = self.clock()
            if not plot_service.service().live or now < self.next_frame:
                return   # no frame now: not even the history's copy
            self.next_frame = now + self.FRAME_EVERY_S
        metrics = {**run.metrics_extra, "history": history_lists(state.history),
                   "best": {"epoch": state.best_epoch, "val_loss": state.best_val_loss}}
        plot_service.service().submit(run.run_dir / "metrics.png", metrics,
                                      f"{run.name} {run.run_id}", final=final)
