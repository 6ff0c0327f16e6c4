"""What a recipe is: a frozen record of the few plain functions that differ between models.

    recipe = Recipe(
        name="autoencoder",
        config=AutoencoderConfig,            # attrs class with a `train: TrainConfig` field
        build_model=build_model,             # cfg -> nn.Module
        build_loaders=build_loaders,         # cfg -> Loaders(train=..., val=...)
        forward_batch=forward_batch,         # (model, batch, ctx) -> Tensor | StepOutput
    )

Optimizer and scheduler default to Adam and ReduceLROnPlateau on the validation loss
(`engine.core.optimizers`, `engine.core.schedules`); `build_scheduler=None` trains with a
constant rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import attrs
import torch

from engine.core import optimizers, schedules
from engine.core.schedules import Schedule


@attrs.frozen
class Loaders:
    """The training and validation loaders a recipe builds."""

    train: Any
    val: Any


@attrs.frozen
class StepOutput:
    """A loss plus extra figures (scalar tensors) to average over validation as `val_<name>`."""

    loss: torch.Tensor
    metrics: Mapping[str, torch.Tensor] = attrs.field(factory=dict)


class StepContext(NamedTuple):
    """What `forward_batch` knows about the step: a tuple, so making one per step is cheap.

    `epoch` counts from 0; `step` is the number of optimizer steps taken before this batch.
    """

    device: torch.device
    training: bool
    epoch: int
    step: int
    rank: int = 0
    world_size: int = 1


@attrs.frozen
class Recipe:
    """A model, its data and its loss, as plain functions the loop calls.

    `callbacks` are `(event, state) -> None` observers added to every run of this recipe.
    `move_batch=False` tells the engine the recipe places batch tensors on the device itself;
    `inference_mode=False` validates under no_grad instead of inference_mode.
    """

    name: str
    config: type
    build_model: Callable[[Any], torch.nn.Module]
    build_loaders: Callable[[Any], Loaders]
    forward_batch: Callable[[torch.nn.Module, Any, StepContext], Any]
    build_optimizer: Callable[[Any, torch.nn.Module], torch.optim.Optimizer] = optimizers.adam
    build_scheduler: Callable[[Any, torch.optim.Optimizer], Schedule] | None = (
        schedules.plateau_on_val_loss)
    callbacks: tuple = attrs.field(default=(), converter=tuple)
    move_batch: bool = True
    # validation under torch.inference_mode(); False: torch.no_grad(), for a model that keeps
    # tensors made during validation (a cache) and uses them in training
    inference_mode: bool = True
