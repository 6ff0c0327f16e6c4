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


def _at_least_two(instance, attribute, value) -> None:
    if value is not None and value < 2:
        raise ValueError(f"{attribute.name} must be >= 2 (or unset: no folds), got {value!r}")


def _fold_index(instance, attribute, value) -> None:
    if instance.folds is None:
        if value != 0:
            raise ValueError(f"fold = {value} needs data.folds (the number of folds) set too")
    elif not 0 <= value < instance.folds:
        raise ValueError(f"fold must be >= 0 and < folds ({instance.folds}), got {value!r}")


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
    """Where the data comes from and how its datasets are split (`[data]`).

    `path` names a `.pt` file in the format of `recipes.ranking_v2.data`; with none, a synthetic
    file is generated from the `synthetic_*` settings (read from its cache under
    `{train.output_dir}/data/` when a run wrote it before). `num_candidates` is K, the models
    ranked per dataset.

    Datasets (never a dataset's models) are split into train, val (chooses the best epoch,
    drives the schedule and early stopping) and test (held out, evaluated once at the end with
    the best weights). Without `folds`: test is `test_fraction` of the datasets, val is
    `val_fraction` of the rest. With `folds = K`: the datasets are dealt into K folds, test is
    fold `fold`, val is `val_fraction` of the other folds (`test_fraction` is not used). The
    split depends on `split_seed` only, not on `train.seed`: seed replicates share it.
    """

    path: str | None = None
    num_candidates: int = attrs.field(default=10, validator=_positive)
    test_fraction: float = attrs.field(default=0.15, validator=_fraction)
    val_fraction: float = attrs.field(default=0.2, validator=_fraction)
    folds: int | None = attrs.field(default=None, validator=_at_least_two)
    fold: int = attrs.field(default=0, validator=_fold_index)
    split_seed: int = 0
    # the synthetic file (used only when path is None)
    synthetic_seed: int = 0
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
