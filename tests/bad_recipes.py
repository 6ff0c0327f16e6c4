"""Small recipes with one mistake each, for the bad-input catalogue (tests/test_bad_input.py)
and `engine check` (tests/test_check.py).

Copied next to a temporary recipes.toml by the tests and registered as e.g.

    [returns_none]
    recipe = "bad_recipes:returns_none"
"""

from __future__ import annotations

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Loaders, Recipe, StepOutput, TrainConfig


@attrs.frozen
class DataConfig:
    samples: int = 48
    features: int = 12
    model_features: int = 12     # what the model's first layer takes
    val_samples: int = 16
    drop_last: bool = False


@attrs.frozen
class TinyConfig:
    train: TrainConfig = attrs.Factory(lambda: TrainConfig(
        epochs=2, batch_size=8, device="cpu", early_stopping_patience=0, log_every_n_steps=1))
    data: DataConfig = attrs.Factory(DataConfig)


def _dataset(n: int, features: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) * 0.1)


def build_loaders(cfg: TinyConfig) -> Loaders:
    d = cfg.data
    return Loaders(
        train=DataLoader(_dataset(d.samples, d.features, 0), batch_size=cfg.train.batch_size,
                         shuffle=True, drop_last=d.drop_last),
        val=DataLoader(_dataset(d.val_samples, d.features, 1), batch_size=cfg.train.batch_size))


def build_model(cfg: TinyConfig) -> nn.Module:
    return nn.Sequential(nn.Linear(cfg.data.model_features, 16), nn.Tanh(), nn.Linear(16, 1))


def forward_batch(model, batch, ctx):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return StepOutput(loss, {"mae": (model(x) - y).abs().mean().detach()})


def _recipe(name: str, **changes) -> Recipe:
    fields = dict(name=name, config=TinyConfig, build_model=build_model,
                  build_loaders=build_loaders, forward_batch=forward_batch)
    fields.update(changes)
    return Recipe(**fields)


good = _recipe("good")


# --- forward_batch returns the wrong thing --------------------------------------------------

def forward_none(model, batch, ctx):
    x, y = batch
    nn.functional.mse_loss(model(x), y)     # forgot to return it


def forward_tuple(model, batch, ctx):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), {"n": len(x)}


def forward_nonscalar(model, batch, ctx):
    x, y = batch
    return nn.functional.mse_loss(model(x), y, reduction="none")


def forward_nograd(model, batch, ctx):
    x, y = batch
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y)


returns_none = _recipe("returns_none", forward_batch=forward_none)
returns_tuple = _recipe("returns_tuple", forward_batch=forward_tuple)
returns_nonscalar = _recipe("returns_nonscalar", forward_batch=forward_nonscalar)
returns_nograd = _recipe("returns_nograd", forward_batch=forward_nograd)


# --- data that the model cannot take, or no data --------------------------------------------

def build_mismatched_model(cfg: TinyConfig) -> nn.Module:
    # the dataset has 12 features per sample; this model was written for 32
    return nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1))


input_mismatch = _recipe("input_mismatch", build_model=build_mismatched_model)


def build_empty_train(cfg: TinyConfig) -> Loaders:
    loaders = build_loaders(cfg)
    return Loaders(train=DataLoader(_dataset(0, cfg.data.features, 0), batch_size=8),
                   val=loaders.val)


def build_empty_val(cfg: TinyConfig) -> Loaders:
    loaders = build_loaders(cfg)
    return Loaders(train=loaders.train,
                   val=DataLoader(_dataset(0, cfg.data.features, 1), batch_size=8))


empty_train = _recipe("empty_train", build_loaders=build_empty_train)
empty_val = _recipe("empty_val", build_loaders=build_empty_val)


def build_nan_loaders(cfg: TinyConfig) -> Loaders:
    # missing measurements are NaN in the data; forward_batch imputes them with 0
    loaders = build_loaders(cfg)
    train = loaders.train.dataset.tensors[0].clone()
    train[::3, 0] = float("nan")
    dataset = TensorDataset(train, loaders.train.dataset.tensors[1])
    return Loaders(train=DataLoader(dataset, batch_size=cfg.train.batch_size),
                   val=loaders.val)


def forward_imputing(model, batch, ctx):
    x, y = batch
    return nn.functional.mse_loss(model(torch.nan_to_num(x)), y)


nan_inputs = _recipe("nan_inputs", build_loaders=build_nan_loaders,
                     forward_batch=forward_imputing)


# --- parameters without gradients, a scheduler stepped without a metric ---------------------

def build_model_with_unused(cfg: TinyConfig) -> nn.Module:
    model = build_model(cfg)
    model.add_module("unused_head", nn.Linear(16, 3))   # never called in forward
    return model


def forward_skipping_head(model, batch, ctx):
    x, y = batch
    h = x
    for layer in list(model)[:3]:
        h = layer(h)
    return nn.functional.mse_loss(h, y)


unused_parameter = _recipe("unused_parameter", build_model=build_model_with_unused,
                           forward_batch=forward_skipping_head)


def plateau_per_epoch(cfg, optimizer):
    from engine import Schedule
    return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer), "epoch")


plateau_per_epoch_recipe = _recipe("plateau_per_epoch", build_scheduler=plateau_per_epoch)


# --- not a recipe at all --------------------------------------------------------------------

not_a_recipe = {"name": "not_a_recipe", "build_model": build_model}


# --- a temporary registry for the tests -----------------------------------------------------

ENTRIES = ("good", "returns_none", "returns_tuple", "returns_nonscalar", "returns_nograd",
           "input_mismatch", "empty_train", "empty_val", "nan_inputs", "unused_parameter",
           "not_a_recipe")


def write_registry(folder, extra: str = "", text: str | None = None):
    """Write `folder/recipes.toml` registering every recipe above and `ae` (the autoencoder on a
    small zoo), plus `extra` (bare keys land in `[ae.train]`), or exactly `text`; copy this
    module next to it."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    shutil.copy(Path(__file__), folder / "bad_recipes.py")
    if text is None:
        blocks = [f'[{n}]\nrecipe = "bad_recipes:{n}"\n' for n in ENTRIES]
        blocks.append('[plateau_per_epoch]\nrecipe = "bad_recipes:plateau_per_epoch_recipe"\n')
        # [ae.train] last, so that `extra` lines such as `epocs = 3` land in it
        blocks.append('[ae]\nrecipe = "recipes.autoencoder:recipe"\n[ae.data]\nnum_models = 64\n'
                      '[ae.train]\nbatch_size = 16\ndevice = "cpu"\n')
        text = "\n".join(blocks) + extra
    path = folder / "recipes.toml"
    path.write_text(text, encoding="utf-8")
    return path
