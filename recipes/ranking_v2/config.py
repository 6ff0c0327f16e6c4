"""ranking_v2's config: `[train]` (the engine's TrainConfig), `[model]` and `[data]`."""

from __future__ import annotations

import attrs

from engine import TrainConfig
from steps.ranking import LOSSES


def _positive(instance, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _fraction(instance, attribute, value) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1 (exclusive), got {value!r}")


def _divides_hidden(instance, attribute, value) -> None:
    _positive(instance, attribute, value)
    if instance.hidden_dim % value:
        raise ValueError(f"num_heads must divide hidden_dim ({instance.hidden_dim}), got {value}")


def _probability(instance, attribute, value) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be >= 0 and < 1, got {value!r}")


def _loss_name(instance, attribute, value) -> None:
    if value not in LOSSES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(LOSSES)}, got {value!r}")


@attrs.frozen
class ModelConfig:
    """The similarity transformer (`[model]`).

    `input_dim` is the token width D; None (the default) reads it from the data file. Setting
    it to anything else than the file's D is refused before training.
    """

    input_dim: int | None = attrs.field(default=None, validator=_positive)
    hidden_dim: int = attrs.field(default=64, validator=_positive)
    num_heads: int = attrs.field(default=4, validator=_divides_hidden)
    num_layers: int = attrs.field(default=1, validator=_positive)
    ff_dim: int = attrs.field(default=128, validator=_positive)
    dropout: float = attrs.field(default=0.1, validator=_non_negative)
    loss: str = attrs.field(default="listnet", validator=_loss_name)
    # ListNet's softmax temperature over per-dataset standardized scores
    temperature: float = attrs.field(default=1.0, validator=_positive)


@attrs.frozen
class DataConfig:
    """Where the data comes from (`[data]`).

    `path` names a `.pt` file in the format of `recipes.ranking_v2.data`; with none, a synthetic
    file is generated from the `synthetic_*` settings and `train.seed` and cached under
    `{train.output_dir}/data/`. `num_candidates` is K, the models ranked per dataset.
    """

    path: str | None = None
    num_candidates: int = attrs.field(default=10, validator=_positive)
    val_fraction: float = attrs.field(default=0.2, validator=_fraction)
    # the synthetic file (used only when path is None)
    synthetic_datasets: int = attrs.field(default=400, validator=_positive)
    synthetic_models: int = attrs.field(default=40, validator=_positive)
    synthetic_token_dim: int = attrs.field(default=32, validator=_positive)
    synthetic_factors: int = attrs.field(default=6, validator=_positive)
    synthetic_dataset_tokens: int = attrs.field(default=16, validator=_positive)
    synthetic_model_tokens: int = attrs.field(default=8, validator=_positive)
    synthetic_token_noise: float = attrs.field(default=2.0, validator=_non_negative)
    synthetic_popularity: float = attrs.field(default=0.6, validator=_non_negative)
    synthetic_missing: float = attrs.field(default=0.05, validator=_probability)


@attrs.frozen
class RankingConfig:
    """ranking_v2's whole config."""

    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelConfig = attrs.Factory(ModelConfig)
    data: DataConfig = attrs.Factory(DataConfig)
