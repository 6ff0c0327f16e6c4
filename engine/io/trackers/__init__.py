"""Trackers: observers that copy a run's figures to TensorBoard, MLflow or a CSV file.

`train.loggers` names them (any of "tensorboard", "mlflow", "csv"); metrics.json stays the
record. Each tracker's module, and the library behind it, is imported only when named, and only
on rank 0. A tracker that fails (an unreachable server, a locked database, a full disk) logs one
warning naming itself and stops; the run goes on.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from engine.core.config import flatten, to_dict
from engine.core.events import Event

LOG = logging.getLogger("engine")

# logger name -> the module (in this package) whose `make(run)` builds its observer
MODULES = {"tensorboard": "tensorboard_events", "mlflow": "mlflow_run", "csv": "csv_file"}


def trackers_for(run: Any) -> tuple:
    """The observers `run.cfg.train.loggers` names, each guarded; none off rank 0."""
    if run.rank != 0 or run.run_dir is None:
        return ()
    observers = []
    for name in dict.fromkeys(run.cfg.train.loggers):   # in order, each once
        try:
            module = importlib.import_module(f"{__name__}.{MODULES[name]}")
            observers.append(Guarded(name, module.make(run)))
        except Exception as exc:
            _warn(name, exc)
    return tuple(observers)


def _warn(name: str, exc: BaseException) -> None:
    LOG.warning("tracker %s is off for the rest of this run: %s: %s (metrics.json still has "
                "every figure)", name, type(exc).__name__, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + "..." if len(text) > 300 else text


class Guarded:
    """A tracker that never fails the run: its first exception logs one warning, closes it, and
    turns it off."""

    def __init__(self, name: str, tracker: Any) -> None:
        self.name = name
        self.tracker = tracker
        self.events = frozenset(tracker.events)
        self.off = False

    def __call__(self, event: Event, state: Any) -> None:
        if self.off:
            return
        try:
            self.tracker(event, state)
        except Exception as exc:
            self.off = True
            _warn(self.name, exc)
            close = getattr(self.tracker, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass


def flat_config(cfg: Any) -> dict[str, Any]:
    """The config as `{"train.learning_rate": 0.001, ...}` (what MLflow params and TensorBoard
    hparams show); lists as text, None values left out."""

    return flatten(to_dict(cfg))


def figures(state: Any) -> dict[str, float]:
    """The last validation's row of the history as numbers, the epoch and empty cells left out."""
    row = {}
    for column, values in state.history.items():
        value = values[-1] if values else None
        if column != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            row[column] = float(value)
    return row
