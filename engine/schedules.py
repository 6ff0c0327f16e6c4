"""Optimizer and learning-rate schedule builders, configured from `cfg.train`.

Any recipe can name one as its `build_optimizer` / `build_scheduler`. Each scheduler builder
returns a `Schedule` that says when the loop steps it. A scheduler builder with a parameter
named `steps_per_epoch` is called with the number of optimizer steps per epoch
(`ceil(len(train_loader) / train.grad_accum_steps)`), for schedules that span the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # engine.recipe imports this module: import Schedule lazily at run time
    from engine.recipe import Schedule


def adam(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam over the trainable parameters with `train.learning_rate` and `train.weight_decay`."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.train.learning_rate,
                            weight_decay=cfg.train.weight_decay)


def plateau_on_val_loss(cfg: Any, optimizer: torch.optim.Optimizer):
    """ReduceLROnPlateau stepped once per validation with the validation loss."""
    from engine.recipe import Schedule

    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.train.lr_decay_factor, patience=cfg.train.lr_patience)
    return Schedule(scheduler, "validation")


# Parameters of these layers are scales and shifts: decaying them toward 0 only hurts.
_NORM_LAYERS = tuple(getattr(torch.nn, name) for name in (
    "LayerNorm", "GroupNorm", "LocalResponseNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
    if hasattr(torch.nn, name))


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights with `weight_decay`, and biases and
    normalisation parameters (1-dim, or owned by a norm layer) with none. Empty groups are
    left out; a parameter shared by several modules appears once."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if param.dim() <= 1 or isinstance(module, _NORM_LAYERS):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay `train.weight_decay`) at `train.learning_rate`; biases and
    normalisation parameters are not decayed."""
    return torch.optim.AdamW(decay_groups(model, cfg.train.weight_decay),
                             lr=cfg.train.learning_rate)


def sgd_nesterov(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum `train.momentum` and weight decay `train.weight_decay`."""
    params = [p for p in model.parameters() if p.requires_grad]
    momentum = cfg.train.momentum
    if momentum <= 0:
        from engine.errors import UserError

        # torch refuses Nesterov without momentum; say which key to change instead
        raise UserError("sgd_nesterov needs momentum", where="train.momentum",
                        expected="0 < momentum < 1", found=f"momentum = {momentum}")
    return torch.optim.SGD(params, lr=cfg.train.learning_rate, momentum=momentum,
                           nesterov=True, weight_decay=cfg.train.weight_decay)


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
    from engine.errors import UserError
    from engine.recipe import Schedule

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
    from engine.recipe import Schedule

    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.train.step_size,
                                                gamma=cfg.train.gamma)
    return Schedule(scheduler, "epoch")
