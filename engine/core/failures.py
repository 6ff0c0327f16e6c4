"""The ways a run ends early, as exceptions that carry the loop state at that moment.

The loop owns its state; when something ends the run mid-epoch, the exception hands the latest
state to whoever turns it into the run's final state (`engine.core.loop.run_loop`), so no second
copy of the state is kept anywhere for failure reports.
"""

from __future__ import annotations

from typing import Any

import attrs


class RunEnded(Exception):
    """Base: the run ended before its last epoch; `state` is the loop state when it did."""

    def __init__(self, message: str, state: Any) -> None:
        super().__init__(message)
        self.state = state


class TrainingFailed(RunEnded):
    """The loop detected a failure (a non-finite loss) at `epoch`, `step` (0-based)."""

    def __init__(self, message: str, state: Any, epoch: int, step: int) -> None:
        super().__init__(message, state)
        self.epoch, self.step = epoch, step


class StopRequested(RunEnded):
    """A stop signal arrived; the loop stopped at a step boundary."""


class RecipeRaised(RunEnded):
    """Recipe code (forward_batch, a callback, a loader) raised during training."""


class StoppedBeforeStart(RunEnded):
    """A stop signal arrived before the first step: nothing was written, nothing to resume."""


def failed_state(state: Any, epoch: int, step: int, message: str, trace: str | None) -> Any:
    """The state of a failed run: status `failed` and `error` = {epoch, step, message} (and
    the traceback, which goes to train.log, not metrics.json)."""
    error = {"epoch": epoch, "step": step, "message": message}
    if trace:
        error["traceback"] = trace
    return attrs.evolve(state, status="failed", error=error)
