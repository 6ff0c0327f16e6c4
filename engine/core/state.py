"""The loop's explicit state, and the pure decisions made from it.

`LoopState` is one frozen record the loop evolves with `evolve`; `Run` holds the mutable
PyTorch objects a run works on, by reference, fixed for the run. Every decision the loop takes
(validate now? is this the best validation? has patience run out?) is a pure function here, so
the invariants of DESIGN.md 5 can be read, and tested, in one place.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

# the history's columns every run has; recipes' metrics add `val_<name>` columns
COLUMNS = ("epoch", "train_loss", "val_loss", "learning_rate", "grad_norm", "clipped_fraction",
           "nonfinite_steps")


@attrs.frozen
class Run:
    """The objects of one run. `model` is the plain module; `train_model` is what the loop calls
    (the same module, or it wrapped by DistributedDataParallel or torch.compile)."""

    recipe: Any
    cfg: Any
    model: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any               # engine.core.recipe.Schedule or None
    scaler: Any                 # torch.amp.GradScaler or None
    loaders: Any                # engine.core.recipe.Loaders
    device: torch.device
    run_dir: Path | None = None
    run_id: str | None = None
    name: str = ""              # the registry key, `{recipe}` in paths and metrics.json
    rank: int = 0
    world_size: int = 1
    # metrics.json's top-level entries beyond the engine's own (a study's `study` block, a
    # recipe's `baselines`), in memory: the metrics writer writes them with every rewrite
    metrics_extra: dict = attrs.field(factory=dict, eq=False)
    # the run's file writer (engine.io.file_writer.FileWriter): the files of its run
    # directory, written off the training path; None without one (or off rank 0)
    files: Any = attrs.field(default=None, eq=False)


@attrs.frozen
class EpochTotals:
    """The running figures of the epoch in progress, summed in step order as Python floats
    (so an epoch split by a resume sums to exactly the same value)."""

    lr: float = 0.0
    loss_sum: float = 0.0
    losses: int = 0
    norm_sum: float = 0.0
    norms: int = 0
    clipped: int = 0
    nonfinite: int = 0


@attrs.frozen
class LoopState:
    """Where the run is. Epochs and steps count from 0.

    `epoch` is the epoch in progress (after the loop: the number of epochs run), `step` the
    number of optimizer steps taken, `batch` the batches consumed in the current epoch.
    `status` is running, completed, early_stopped, interrupted, failed (or a `stop_when`
    status such as a study's pruned).
    `history` maps each column (`epoch`, `train_loss`, `val_loss`, `learning_rate`,
    `val_<metric>`, ...) to a tuple with one entry per validation.
    """

    run: Run | None = None
    epoch: int = 0
    step: int = 0
    batch: int = 0
    history: Mapping[str, tuple] = attrs.field(factory=lambda: dict.fromkeys(COLUMNS, ()))
    best_val_loss: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0
    improved: bool = False
    status: str = "running"
    error: Mapping[str, Any] | None = None
    recent_loss: float | None = None
    skipped_steps: int = 0
    totals: EpochTotals = attrs.field(factory=EpochTotals)
    epoch_rng: Any = None           # RNG states at the start of this epoch (mid-epoch resume)
    checkpoint_path: str | None = None
    # the best validation's weights, kept in memory (on the device) for RunResult.model;
    # a later improvement copies into the same tensors (no allocation per improvement)
    best_weights: Any = attrs.field(default=None, repr=False, eq=False)


_STATE_FIELDS = tuple(a.name for a in attrs.fields(LoopState))
_read_state = operator.attrgetter(*_STATE_FIELDS)


def evolve(state: LoopState, **changes: Any) -> LoopState:
    """`attrs.evolve` for a LoopState, reading its fields in one call instead of one each
    (a few times an epoch on the loop's path).

    >>> evolve(LoopState(), epoch=2, step=18).step
    18
    """
    return LoopState(**{**dict(zip(_STATE_FIELDS, _read_state(state))), **changes})


def should_validate(epoch: int, epochs: int, every: int) -> bool:
    """Invariant 1: after epoch e when (e + 1) % every == 0, and always after the last one."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def is_improvement(val_loss: float, best: float | None, min_delta: float) -> bool:
    """Invariant 4: a validation is the new best when it beats the best by more than min_delta
    (with min_delta 0, the first of the lowest wins: ties do not replace it)."""
    if not math.isfinite(val_loss):
        return False
    return best is None or val_loss < best - min_delta


def record_validation(state: LoopState, row: Mapping[str, float], min_delta: float,
                      patience: int) -> LoopState:
    """Append one validation's row to the history and take the best / patience decisions."""
    history = dict(state.history)
    n = len(history.get("epoch", ()))
    for key, value in row.items():
        # a metric that first appears late is padded so every column keeps one entry per row
        history[key] = (history[key] if key in history else (None,) * n) + (value,)
    for key in history:
        if key not in row:
            history[key] = history[key] + (None,)
    improved = is_improvement(row["val_loss"], state.best_val_loss, min_delta)
    if improved:
        return evolve(state, history=history, best_val_loss=row["val_loss"],
                      best_epoch=row["epoch"], bad_validations=0, improved=True)
    bad = state.bad_validations + 1
    status = "early_stopped" if patience > 0 and bad >= patience else state.status
    return evolve(state, history=history, bad_validations=bad, improved=False,
                  status=status)


def history_lists(history: Mapping[str, tuple]) -> dict[str, list]:
    """The history as a dict of equal-length lists (what metrics.json and RunResult hold)."""
    return {key: list(values) for key, values in history.items()}


def loop_state_dict(state: LoopState) -> dict:
    """The resumable part of the state as plain values (numbers, strings, lists, dicts)."""
    return {
        "epoch": state.epoch, "step": state.step, "batch": state.batch,
        "history": history_lists(state.history), "best_val_loss": state.best_val_loss,
        "best_epoch": state.best_epoch, "bad_validations": state.bad_validations,
        "status": state.status, "skipped_steps": state.skipped_steps,
    }


def loop_state_from_dict(data: Mapping[str, Any], run: Run) -> LoopState:
    """The inverse of `loop_state_dict`."""
    return LoopState(
        run=run, epoch=data["epoch"], step=data["step"], batch=data["batch"],
        history={k: tuple(v) for k, v in data["history"].items()},
        best_val_loss=data["best_val_loss"], best_epoch=data["best_epoch"],
        bad_validations=data["bad_validations"], status="running",
        skipped_steps=data.get("skipped_steps", 0))
