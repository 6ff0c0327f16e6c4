"""What the loop does with a non-finite training loss, by `train.nan_policy`.

- `stop` (default): nothing per step; the window's read at the next log interval fails the run
  (`engine.core.window`), so the default path adds no host sync.
- `skip`: drop the batch's update (its whole accumulation group) and go on, up to
  `train.max_skipped_steps`.
- `rollback`: as `skip`, and reload the weights, optimizer, scheduler and scaler of the last
  epoch end (a `Rollback` snapshot in memory).

`skip` and `rollback` read the loss every step: a sync the user opts into. A new policy is a
value in `RANGES["nan_policy"]` (engine.core.config) and a branch in `drop_step`.
"""

from __future__ import annotations

import copy

import attrs

from engine.core.failures import TrainingFailed
from engine.core.state import LoopState, Run


def load_objects(run: Run, data: dict) -> None:
    """Load model, optimizer, scheduler and scaler state from a checkpoint dict."""
    run.model.load_state_dict(data["model"])
    run.optimizer.load_state_dict(data["optimizer"])
    if run.schedule is not None and data.get("scheduler") is not None:
        run.schedule.scheduler.load_state_dict(data["scheduler"])
    if run.scaler is not None and data.get("scaler") is not None:
        run.scaler.load_state_dict(data["scaler"])


class Rollback:
    """The in-memory snapshot `rollback` returns to: taken at the start and each epoch end."""

    __slots__ = ("point",)

    def __init__(self) -> None:
        self.point: dict | None = None

    def take(self, run: Run) -> None:
        """Snapshot the run's model, optimizer, scheduler and scaler state (a deep copy)."""
        self.point = copy.deepcopy({
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.schedule.scheduler.state_dict() if run.schedule else None,
            "scaler": run.scaler.state_dict() if run.scaler else None})


def drop_step(run: Run, state: LoopState, rollback: Rollback) -> LoopState:
    """skip / rollback: count the non-finite step, drop its gradients (rollback: reload the
    snapshot); past `train.max_skipped_steps` the run fails."""
    train = run.cfg.train
    run.optimizer.zero_grad(set_to_none=True)
    totals = state.totals
    state = attrs.evolve(state, skipped_steps=state.skipped_steps + 1,
                         totals=attrs.evolve(totals, nonfinite=totals.nonfinite + 1))
    if state.skipped_steps > train.max_skipped_steps:
        raise TrainingFailed(
            f"non-finite training loss at epoch {state.epoch + 1}, step {state.step + 1}: "
            f"{state.skipped_steps} non-finite steps, more than train.max_skipped_steps = "
            f"{train.max_skipped_steps}", state, state.epoch, state.step)
    if train.nan_policy == "rollback":
        load_objects(run, rollback.point)
    return state
