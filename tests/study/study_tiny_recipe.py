"""A tiny regression recipe for the study tests: fast, with a metric, a `test` entry, and two
knobs the tests turn: `model.step_sleep` (slow steps, to kill a worker mid-run) and
`model.fail_seed` (forward_batch raises for that seed while STUDY_TEST_FAIL=1 is set)."""

from __future__ import annotations

import os
import time

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Event, Loaders, Recipe, StepOutput, TrainConfig, add_metrics_entry, listens_to


@attrs.frozen
class ModelConfig:
    width: int = 4
    step_sleep: float = 0.0
    fail_seed: int = -1


@attrs.frozen
class TinyConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelConfig = attrs.Factory(ModelConfig)


class Tiny(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, cfg.model.width), nn.Tanh(),
                                 nn.Linear(cfg.model.width, 1))
        self.step_sleep = cfg.model.step_sleep
        self.fails = (cfg.model.fail_seed == cfg.train.seed
                      and os.environ.get("STUDY_TEST_FAIL") == "1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_loaders(cfg: TinyConfig) -> Loaders:
    g = torch.Generator().manual_seed(cfg.train.seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(64, 1, generator=g)
    return Loaders(train=DataLoader(TensorDataset(x[16:], y[16:]), batch_size=16, shuffle=True),
                   val=DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16))


def forward_batch(model: Tiny, batch, ctx) -> StepOutput:
    x, y = batch
    if ctx.training:
        if model.fails and ctx.step >= 1:
            raise RuntimeError("planned failure for the retry test")
        if model.step_sleep:
            time.sleep(model.step_sleep)
    pred = model(x)
    mse = nn.functional.mse_loss(pred, y)
    return StepOutput(mse, {"mae": (pred - y).abs().mean().detach()})


@listens_to(Event.VALIDATION_END)   # written with the next metrics.json write
def test_figures(event, state) -> None:
    """A held-out figure, nested one level (a recipe's `test` entry)."""
    add_metrics_entry(state.run, "test", {"model": {"seed_plus_half": 0.5 + state.run.cfg.train
                                                    .seed}, "rows": 16})


recipe = Recipe(name="tiny", config=TinyConfig, build_model=Tiny, build_loaders=build_loaders,
                forward_batch=forward_batch, callbacks=(test_figures,))
