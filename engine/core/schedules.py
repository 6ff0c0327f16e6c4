"""Learning-rate schedules: `Schedule` and its builders, configured from `cfg.train`.

Any recipe can name one as its `build_scheduler` (optimizers: `engine.core.optimizers`). Each
returns a `Schedule` that says when the loop steps it. A scheduler builder with a parameter
named `steps_per_epoch` is called with the number of optimizer steps per epoch
(`ceil(len(train_loader) / train.grad_accum_steps)`), for schedules that span the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch

from engine.core.errors import UserError

INTERVALS = ("step", "epoch", "validation")


@attrs.frozen
class Schedule:
    """A learning-rate scheduler and when the loop steps it.

    `interval` is "step" (after every optimizer step), "epoch" (after every training epoch) or
    "validation" (after every validation, with the validation loss: ReduceLROnPlateau).
    """

    scheduler: Any
    interval: str = attrs.field(default="validation", validator=attrs.validators.in_(INTERVALS))


def plateau_on_val_loss(cfg: Any, optimizer: torch.optim.Optimizer):
    """ReduceLROnPlateau stepped once per validation with the validation loss."""
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.train.lr_decay_factor, patience=cfg.train.lr_patience)
    return Schedule(scheduler, "validation")


def warmup_cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The multiplier of the base rate for optimizer step `step` (counting from 0).

    Steps 0..warmup-1 rise linearly, (step + 1) / (warmup + 1), so step `warmup` is the first at
    the full rate; from there a half cosine falls to `floor` (min_lr / base rate) at step
    total - 1, and stays there if training runs longer.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _factor_fn(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    # a plain function (not a partial): LambdaLR's state_dict then stores None for it
    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup, total, floor)
    return factor


def warmup_cosine(cfg: Any, optimizer: torch.optim.Optimizer,
                  steps_per_epoch: int) -> Schedule:
    """Linear warmup over `train.warmup_steps` optimizer steps, then cosine decay to
    `train.min_lr` at the last optimizer step (`train.epochs * steps_per_epoch` in all).

    Stepped after every optimizer step. A LambdaLR over a plain function: its state_dict holds
    only numbers, so checkpoints load with `weights_only=True`.
    """

    train = cfg.train
    total = train.epochs * max(1, steps_per_epoch)
    lambdas = []
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        if train.min_lr > base:
            raise UserError("train.min_lr is above the learning rate it decays from",
                            where="train.min_lr", expected=f"<= {base:g} (train.learning_rate)",
                            found=f"min_lr = {train.min_lr:g}")
        floor = train.min_lr / base if base > 0 else 0.0
        lambdas.append(_factor_fn(train.warmup_steps, total, floor))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return Schedule(scheduler, "step")


def step_decay(cfg: Any, optimizer: torch.optim.Optimizer) -> Schedule:
    """Multiply the rate by `train.gamma` every `train.step_size` epochs (stepped per epoch)."""

    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.train.step_size,
                                                gamma=cfg.train.gamma)
    return Schedule(scheduler, "epoch")
