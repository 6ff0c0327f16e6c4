"""The autoencoder recipe: config, synthetic model zoo, model and loss."""

from __future__ import annotations

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Loaders, Recipe, StepOutput, TrainConfig


@attrs.frozen
class ModelConfig:
    hidden_dim: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    latent_dim: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    dropout: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0.0),
                                                          attrs.validators.lt(1.0)])


@attrs.frozen
class DataConfig:
    num_models: int = attrs.field(default=2048, validator=attrs.validators.ge(8))
    feature_dim: int = attrs.field(default=64, validator=attrs.validators.ge(2))
    rank: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    noise: float = attrs.field(default=0.05, validator=attrs.validators.ge(0.0))
    val_fraction: float = attrs.field(default=0.2, validator=[attrs.validators.gt(0.0),
                                                               attrs.validators.lt(1.0)])


@attrs.frozen
class AutoencoderConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelConfig = attrs.Factory(ModelConfig)
    data: DataConfig = attrs.Factory(DataConfig)


def make_zoo(data: DataConfig, seed: int) -> torch.Tensor:
    """`num_models x feature_dim` descriptions from `rank` hidden factors, standardised per
    feature (so the variance of the data, the loss of predicting the mean, is 1)."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(data.num_models, data.rank, generator=g)
    mix = torch.randn(data.rank, data.feature_dim, generator=g) / data.rank ** 0.5
    bend = torch.randn(data.feature_dim, generator=g)
    x = torch.tanh(factors @ mix + 0.5 * bend) + 0.3 * (factors @ mix)
    x = x + data.noise * torch.randn(x.shape, generator=g)
    return (x - x.mean(0)) / x.std(0)


def build_loaders(cfg: AutoencoderConfig) -> Loaders:
    x = make_zoo(cfg.data, cfg.train.seed)
    n_val = max(1, int(len(x) * cfg.data.val_fraction))
    train, val = x[n_val:], x[:n_val]
    return Loaders(
        train=DataLoader(TensorDataset(train), batch_size=cfg.train.batch_size, shuffle=True,
                         num_workers=cfg.train.num_workers),
        val=DataLoader(TensorDataset(val), batch_size=cfg.train.batch_size,
                       num_workers=cfg.train.num_workers))


def build_model(cfg: AutoencoderConfig) -> nn.Module:
    d, h, z = cfg.data.feature_dim, cfg.model.hidden_dim, cfg.model.latent_dim
    return nn.Sequential(
        nn.Linear(d, h), nn.GELU(), nn.Dropout(cfg.model.dropout), nn.Linear(h, z),   # encoder
        nn.Linear(z, h), nn.GELU(), nn.Dropout(cfg.model.dropout), nn.Linear(h, d))   # decoder


def forward_batch(model: nn.Module, batch: list[torch.Tensor], ctx) -> StepOutput:
    (x,) = batch
    mse = nn.functional.mse_loss(model(x), x)
    # the data is standardised, so 1 - mse is the share of variance explained
    return StepOutput(mse, {"explained_variance": 1.0 - mse.detach()})


recipe = Recipe(name="autoencoder", config=AutoencoderConfig, build_model=build_model,
                build_loaders=build_loaders, forward_batch=forward_batch)
