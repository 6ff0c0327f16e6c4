"""Optimizer builders, configured from `cfg.train`: any recipe can name one as its
`build_optimizer`.

    recipe = Recipe(..., build_optimizer=optimizers.adamw)
"""

from __future__ import annotations

from typing import Any

import torch

from engine.core.errors import UserError


def adam(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam over the trainable parameters with `train.learning_rate` and `train.weight_decay`."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.train.learning_rate,
                            weight_decay=cfg.train.weight_decay)


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

        # torch refuses Nesterov without momentum; say which key to change instead
        raise UserError("sgd_nesterov needs momentum", where="train.momentum",
                        expected="0 < momentum < 1", found=f"momentum = {momentum}")
    return torch.optim.SGD(params, lr=cfg.train.learning_rate, momentum=momentum,
                           nesterov=True, weight_decay=cfg.train.weight_decay)
