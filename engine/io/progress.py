"""The progress bar: tqdm over each epoch's optimizer steps, on a terminal only."""

from __future__ import annotations

import math
import sys
from typing import Any

from tqdm import tqdm

from engine.core.events import Event


class ProgressBar:
    """tqdm over each epoch's optimizer steps, with the latest logged loss and the rate."""

    def __init__(self) -> None:
        self.bar = None
        self.shown_loss = None
        # no terminal, no bar (tqdm's disable=None): then it listens to nothing, so a run
        # whose stderr is a file or a pipe pays nothing per step for it
        self.events = (frozenset({Event.EPOCH_START, Event.STEP_END, Event.EPOCH_END,
                                  Event.FIT_END}) if _terminal() else frozenset())

    def __call__(self, event: Event, state: Any) -> None:
        run = state.run
        train = run.cfg.train
        if event is Event.EPOCH_START:
            self.close()
            total = math.ceil(len(run.loaders.train) / train.grad_accum_steps)
            done = math.ceil(state.batch / train.grad_accum_steps)
            self.bar = tqdm(total=total, initial=done, desc=f"epoch {state.epoch + 1}/"
                            f"{train.epochs}", unit="step", leave=False, dynamic_ncols=True,
                            disable=None)   # None: no bar when stderr is not a terminal
            self.shown_loss = None
        elif event is Event.STEP_END and self.bar is not None:
            self.bar.update(1)
            if state.recent_loss is not None and state.recent_loss != self.shown_loss:
                # recent_loss changes only at log intervals: no per-step formatting
                self.shown_loss = state.recent_loss
                self.bar.set_postfix(loss=f"{state.recent_loss:.4g}",
                                     lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                                     refresh=False)
        else:
            self.close()

    def close(self) -> None:
        """Close the epoch's bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed
        return False
