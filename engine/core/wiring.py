"""What one run's loop is connected to (`Wiring`), and what it settles once per run
(`StepSettings`), so the loop's functions take one argument instead of seven."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import attrs
import torch

import steps
from engine.core.best_weights import WeightsPlan, plan_weights
from engine.core.nonfinite import Rollback
from engine.core.state import LoopState, Run
from engine.core.window import FigureWindow


class Checkpointer(Protocol):
    """Writes a run's checkpoints; each method returns the paths it wrote (best first).
    `writes` False: it writes nothing, so the loop skips what only checkpoints need."""

    writes: bool

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]:
        """Write last.pt (mid-epoch when a signal or checkpoint_every_n_steps asks)."""

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]:
        """Write the epoch's checkpoints (best.pt and model.pt too when `improved`)."""

    def close(self) -> None:
        """Finish anything pending; the run's checkpoints are whole afterwards."""


class NoCheckpoints:
    """The checkpointer of a run without a run directory: writes nothing."""

    writes = False   # the loop skips each epoch's RNG capture

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]:
        """Nothing to write."""
        return []

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]:
        """Nothing to write."""
        return []

    def close(self) -> None:
        """Nothing pending."""
        pass


class StepSettings(NamedTuple):
    """The per-step choices, read from the config once per run: a tuple the loop unpacks."""

    move: bool                  # copy batches to the device (not for CPU, nor move_batch=False)
    non_blocking: bool
    accum: int
    clip: float
    log_every: int
    ckpt_every: int
    check_each_step: bool       # skip / rollback read the loss every step: the user's choice
    autocast: Any               # a reusable autocast context, or None for fp32
    ddp_accum: bool
    step_scheduler: Any         # the scheduler stepped per optimizer step, or None
    params: list[torch.Tensor]
    n_batches: int


def step_settings(run: Run, world: Any) -> StepSettings:
    """The run's StepSettings, read from its config and objects once."""
    train, device = run.cfg.train, run.device
    schedule = run.schedule
    return StepSettings(
        move=run.recipe.move_batch and device.type != "cpu", non_blocking=device.type == "cuda",
        accum=train.grad_accum_steps, clip=train.gradient_clip_value,
        log_every=train.log_every_n_steps, ckpt_every=train.checkpoint_every_n_steps,
        check_each_step=train.nan_policy != "stop",
        autocast=steps.autocast_or_none(device, train.precision),
        ddp_accum=world.active and train.grad_accum_steps > 1,
        step_scheduler=(schedule.scheduler if schedule is not None
                        and schedule.interval == "step" else None),
        params=[p for g in run.optimizer.param_groups for p in g["params"]],
        n_batches=len(run.loaders.train))


@attrs.frozen
class Wiring:
    """One run's connections: its objects, the observers (a table from
    `engine.core.events.listeners`), the checkpointer, the stop flag (engine.core.signals),
    `before_start(first_batch)`, called with the first training batch this process draws
    before FIT_START (fit's first-batch check, then the run directory), and `stop_when`, a
    predicate asked after each validation: a status it returns (a study's "pruned") ends the
    run after that epoch's checkpoint."""

    run: Run
    world: Any
    table: dict
    checkpointer: Any = attrs.field(factory=NoCheckpoints)
    stop: Any = None
    before_start: Callable[[Any], None] | None = None
    stop_when: Callable[[LoopState], str | None] | None = None
    window: FigureWindow = attrs.field(init=False)
    rollback: Rollback = attrs.field(init=False, factory=Rollback)
    settings: StepSettings = attrs.field(init=False)
    weights: WeightsPlan | None = attrs.field(init=False)

    @window.default
    def _window(self) -> FigureWindow:
        train = self.run.cfg.train
        return FigureWindow(self.world, self.run.device, train.gradient_clip_value,
                            train.grad_accum_steps)

    @settings.default
    def _settings(self) -> StepSettings:
        return step_settings(self.run, self.world)

    @weights.default
    def _weights(self) -> WeightsPlan | None:
        return plan_weights(self.run.model)
