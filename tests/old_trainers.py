"""Trainers written in the old style (one class per model, config dataclass, everything built in
`__init__`), and the same models written as recipes, for tests/test_migrate.py and
tests/test_adapter.py.

Both styles draw from the RNG in the same order (model, then data), so with the same seed they
give the same weights: what the equivalence tests compare.

Registered in temporary recipes.toml files by the CLI tests, e.g.

    [old_loss]
    recipe = "old_trainers:old_loss_recipe"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from engine import Loaders, Recipe, TrainConfig
from engine.compat.migrate import recipe_from_trainer

FEATURES = 6


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    return x, (x[:, :2].sum(1, keepdim=True) - x[:, 2:3])


def _model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))


class DictDataset(Dataset):
    """Samples as dicts, so the default collate gives dict batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.x[i], "target": self.y[i]}


# --- old style, hook 1: compute_loss(batch) on (x, y) tuples ---------------------------------

@dataclass
class RegressionConfig:
    """A BaseTrainerConfig-style dataclass (old field names)."""

    num_epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-3
    weight_decay: float = 0.0
    gradient_clip_value: float | None = 1.0
    early_stopping_patience: int | None = None
    lr_decay_factor: float = 0.5
    lr_patience: int = 1
    seed: int = 7
    device: str | None = "cpu"
    save_dir: Path = Path("artifacts")
    hidden_dim: int = 16
    samples: int = 96


class RegressionTrainer:
    """The old BaseTrainer subclass, as it was written (minus the base class)."""

    def __init__(self, config: RegressionConfig | None = None) -> None:
        self.config = config or RegressionConfig()
        self.device = torch.device(self.config.device or "cpu")
        self.model = _model(self.config.hidden_dim).to(self.device)
        x, y = _data(self.config.samples, 1)
        n_val = self.config.samples // 4
        self.train_loader = DataLoader(TensorDataset(x[n_val:], y[n_val:]),
                                       batch_size=self.config.batch_size, shuffle=True)
        self.val_loader = DataLoader(TensorDataset(x[:n_val], y[:n_val]),
                                     batch_size=self.config.batch_size)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate,
                                          weight_decay=self.config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.config.lr_decay_factor,
            patience=self.config.lr_patience)

    def compute_loss(self, batch):
        x, y = (t.to(self.device) for t in batch)
        return nn.functional.mse_loss(self.model(x), y)


# --- old style, hook 2: _forward_batch(batch) on dict batches, other field names --------------

@dataclass
class DictConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-3
    grad_clip: float | None = None
    patience: int = 0
    lr_factor: float = 0.5
    lr_patience: int = 1
    seed: int = 7
    device: str = "cpu"
    hidden_dim: int = 16
    samples: int = 96
    widths: list = field(default_factory=lambda: [16])


class DictTrainer:
    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self.model = _model(config.hidden_dim)
        x, y = _data(config.samples, 1)
        n_val = config.samples // 4
        self.train_loader = DataLoader(DictDataset(x[n_val:], y[n_val:]),
                                       batch_size=config.batch_size, shuffle=True)
        self.val_loader = DataLoader(DictDataset(x[:n_val], y[:n_val]),
                                     batch_size=config.batch_size)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.lr_factor, patience=config.lr_patience)

    def _forward_batch(self, batch: dict):
        out = self.model(batch["inputs"])
        return {"loss": nn.functional.mse_loss(out, batch["target"]),
                "mae": (out - batch["target"]).abs().mean().detach()}


# --- broken old-style trainers ---------------------------------------------------------------

class NoValLoader(RegressionTrainer):
    """Forgot to set val_loader."""

    def __init__(self, config: RegressionConfig | None = None) -> None:
        super().__init__(config)
        del self.val_loader


class NoHook:
    def __init__(self, config: RegressionConfig) -> None:
        self.config = config


# --- the same models as recipes --------------------------------------------------------------

@attrs.frozen
class ModelConfig:
    hidden_dim: int = 16
    samples: int = 96


@attrs.frozen
class NativeConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelConfig = attrs.Factory(ModelConfig)


def native_cfg(**train: object) -> NativeConfig:
    """The native config equal to RegressionConfig() / DictConfig() (old defaults)."""
    values = dict(epochs=3, batch_size=16, learning_rate=5e-3, gradient_clip_value=1.0,
                  early_stopping_patience=0, lr_decay_factor=0.5, lr_patience=1, seed=7,
                  device="cpu")
    values.update(train)
    return NativeConfig(train=TrainConfig(**values))


def _loaders(cfg: NativeConfig, dataset: type) -> Loaders:
    x, y = _data(cfg.model.samples, 1)
    n_val = cfg.model.samples // 4
    return Loaders(DataLoader(dataset(x[n_val:], y[n_val:]), batch_size=cfg.train.batch_size,
                              shuffle=True),
                   DataLoader(dataset(x[:n_val], y[:n_val]), batch_size=cfg.train.batch_size))


def _forward_tuple(model, batch, ctx):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _forward_dict(model, batch, ctx):
    from engine import StepOutput
    out = model(batch["inputs"])
    return StepOutput(nn.functional.mse_loss(out, batch["target"]),
                      {"mae": (out - batch["target"]).abs().mean().detach()})


native_tuple = Recipe(name="native_tuple", config=NativeConfig,
                      build_model=lambda cfg: _model(cfg.model.hidden_dim),
                      build_loaders=lambda cfg: _loaders(cfg, TensorDataset),
                      forward_batch=_forward_tuple)
native_dict = Recipe(name="native_dict", config=NativeConfig,
                     build_model=lambda cfg: _model(cfg.model.hidden_dim),
                     build_loaders=lambda cfg: _loaders(cfg, DictDataset),
                     forward_batch=_forward_dict)

# what a recipes.toml entry names: built at import, like a migrated module would
old_loss_recipe = recipe_from_trainer(RegressionTrainer, name="old_loss")
old_dict_recipe = recipe_from_trainer(DictTrainer, name="old_dict")
no_val_loader_recipe = recipe_from_trainer(NoValLoader, name="no_val_loader")
