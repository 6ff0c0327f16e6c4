"""A recipe whose validation losses follow a given script, for property tests of the loop.

Training is a real (tiny) regression, so optimizer steps, clipping and accumulation are real;
validation returns `script.val_losses[epoch]` so best / early-stopping / scheduler decisions
can be predicted exactly; `script.nan_at_step` makes one training step's loss NaN.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Loaders, Recipe, Schedule, TrainConfig


@attrs.frozen
class Script:
    val_losses: tuple = ()
    nan_at_step: int = -1
    n_train: int = 8
    n_val: int = 4
    scale: float = 1.0            # target scale: large values give large gradients
    interval: str = "validation"  # when the recording scheduler steps


@attrs.frozen
class ScriptConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    script: Script = attrs.Factory(Script)


class ScriptedModel(nn.Module):
    def __init__(self, script: Script) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.script = script


def build_model(cfg: ScriptConfig) -> nn.Module:
    return ScriptedModel(cfg.script)


def build_loaders(cfg: ScriptConfig) -> Loaders:
    g = torch.Generator().manual_seed(1234)
    n = cfg.script.n_train + cfg.script.n_val
    x = torch.randn(n, 3, generator=g)
    y = cfg.script.scale * (x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1)
    train = TensorDataset(x[:cfg.script.n_train], y[:cfg.script.n_train])
    val = TensorDataset(x[cfg.script.n_train:], y[cfg.script.n_train:])
    return Loaders(train=DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True),
                   val=DataLoader(val, batch_size=cfg.train.batch_size))


def forward_batch(model: ScriptedModel, batch, ctx) -> torch.Tensor:
    x, y = batch
    loss = ((model.linear(x) - y) ** 2).mean()
    if ctx.training:
        if ctx.step == model.script.nan_at_step:
            loss = loss * math.nan
        return loss
    return loss * 0 + model.script.val_losses[ctx.epoch]


class RecordingScheduler:
    """Records every step() call; its state is plain data so checkpoints can hold it."""

    def __init__(self) -> None:
        self.calls: list = []

    def step(self, metric=None) -> None:
        self.calls.append(metric)

    def state_dict(self) -> dict:
        return {"calls": list(self.calls)}

    def load_state_dict(self, state: dict) -> None:
        self.calls = list(state["calls"])


def build_scheduler(cfg: ScriptConfig, optimizer) -> Schedule:
    return Schedule(RecordingScheduler(), cfg.script.interval)


def build_optimizer(cfg: ScriptConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate)


recipe = Recipe(name="scripted", config=ScriptConfig, build_model=build_model,
                build_loaders=build_loaders, forward_batch=forward_batch,
                build_optimizer=build_optimizer, build_scheduler=build_scheduler)


def make_cfg(val_losses, **train) -> ScriptConfig:
    script_keys = {k: train.pop(k) for k in list(train) if k in attrs.fields_dict(Script)}
    train.setdefault("epochs", len(val_losses))
    train.setdefault("batch_size", 2)
    train.setdefault("learning_rate", 0.01)
    train.setdefault("early_stopping_patience", 0)
    return ScriptConfig(train=TrainConfig(**train),
                        script=Script(val_losses=tuple(val_losses), **script_keys))
