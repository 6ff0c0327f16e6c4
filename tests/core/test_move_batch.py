"""`move_batch = False`: the engine leaves batches as the loader made them (fit never copies
them), and under torchrun the loaders are still sharded (a recipe that places tensors itself
still wants its rank's share of the data: docs/distributed.md)."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from engine import Loaders, Recipe, TrainConfig, fit
from engine.core.building import prepare_loaders
from engine.core.distributed import World


@attrs.frozen
class Cfg:
    train: TrainConfig = attrs.Factory(lambda: TrainConfig(
        epochs=2, batch_size=4, device="cpu", early_stopping_patience=0))


@attrs.frozen
class Marked:
    """A batch type of the recipe's own, holding a tensor on the meta device."""
    x: torch.Tensor
    tag: str = "from the loader"


SEEN: list = []


def _collate(items):
    # integers: the preflight looks for NaN in floating tensors only (meta has no values)
    return Marked(torch.stack([i[0] for i in items]).long().to("meta"))


def _loaders(cfg):
    data = TensorDataset(torch.randn(12, 3))
    return Loaders(train=DataLoader(data, batch_size=4, collate_fn=_collate, shuffle=True),
                   val=DataLoader(data, batch_size=4, collate_fn=_collate))


def _forward(model, batch, ctx):
    SEEN.append((type(batch).__name__, batch.tag, batch.x.device.type, tuple(batch.x.shape)))
    # the batch lives on meta (no data): the loss comes from the model alone
    return model(torch.ones(1, 3)).pow(2).mean()


placing = Recipe(name="placing", config=Cfg, build_model=lambda cfg: nn.Linear(3, 1),
                 build_loaders=_loaders, forward_batch=_forward, build_scheduler=None,
                 move_batch=False)


def test_fit_hands_forward_batch_the_loaders_batches_untouched():
    """Every batch forward_batch sees (training and validation) is the collate function's
    record with its tensor still on meta: a copy to the run's device would fail or show."""
    SEEN.clear()
    result = fit(placing, Cfg())
    assert result.status == "completed"
    assert len(SEEN) >= 2 * (3 + 3)
    assert set(SEEN) == {("Marked", "from the loader", "meta", (4, 3))}


@pytest.mark.parametrize("move_batch", [True, False])
def test_loaders_are_sharded_under_torchrun_whatever_move_batch(move_batch):
    """Rank 1 of 2 gets a DistributedSampler over the training set (its half, rank-strided)
    and every other validation sample, with or without move_batch."""
    recipe = attrs.evolve(placing, move_batch=move_batch)
    loaders = prepare_loaders(recipe, _loaders(Cfg()), World(rank=1, world_size=2),
                              torch.device("cpu"), seed=0)
    sampler = loaders.train.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.rank, sampler.num_replicas, sampler.shuffle) == (1, 2, True)
    assert len(list(sampler)) == 6
    assert list(loaders.val.sampler) == [1, 3, 5, 7, 9, 11]
    assert loaders.train.collate_fn is _collate
