"""Inputs at the edges (issue 14): batches the engine must move, ENGINE_DIST_TIMEOUT, and the
loaders rebuilt to pin memory on one CUDA device (tested on CPU through their attributes)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import attrs
import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

from engine import Loaders, Recipe, TrainConfig, UserError, fit
from engine.core import distributed
from engine.core.building import prepare_loaders
from engine.core.preflight import first_batch_check

CPU = torch.device("cpu")


@attrs.frozen
class Cfg:
    train: TrainConfig = attrs.Factory(lambda: TrainConfig(
        epochs=1, batch_size=4, device="cpu", early_stopping_patience=0))


class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.full((3,), float(i)), torch.tensor([float(i)])


def as_defaultdict(samples):
    x, y = torch.utils.data.default_collate(samples)
    return defaultdict(list, {"x": x, "y": y})


def build_loaders(cfg) -> Loaders:
    return Loaders(train=DataLoader(Pairs(), batch_size=4, collate_fn=as_defaultdict),
                   val=DataLoader(Pairs(), batch_size=4, collate_fn=as_defaultdict))


def forward(model, batch, ctx):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


recipe = Recipe(name="mapping", config=Cfg, build_model=lambda cfg: nn.Linear(3, 1),
                build_loaders=build_loaders, forward_batch=forward)


def test_fit_moves_a_defaultdict_batch():
    """A collate_fn returning a defaultdict trains (it was a TypeError in the preflight)."""
    result = fit(recipe, Cfg())
    assert result.status == "completed" and len(result.history["val_loss"]) == 1


class Broken(Mapping):
    """A Mapping that lists a key it cannot give."""

    def __getitem__(self, key):
        raise RuntimeError(f"no value for {key}")

    def __iter__(self):
        return iter(["x"])

    def __len__(self):
        return 1


def test_a_batch_that_cannot_be_moved_is_a_user_error():
    """The preflight's move is inside its error handling: a UserError naming build_loaders."""
    loaders = Loaders(train=[Broken()], val=[Broken()])
    with pytest.raises(UserError) as caught:
        first_batch_check(recipe, Cfg(), nn.Linear(3, 1), loaders, CPU)
    text = caught.value.render()
    assert "cannot be moved to cpu" in text and "build_loaders" in text
    assert "no value for x" in text


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", ""])
def test_bad_dist_timeout_is_a_user_error(monkeypatch, value):
    """ENGINE_DIST_TIMEOUT that is not a positive number: a UserError naming the variable,
    before any process group starts."""
    monkeypatch.setenv("ENGINE_DIST_TIMEOUT", value)
    with pytest.raises(UserError) as caught:
        distributed.init(distributed.World(0, 2, 0), CPU)
    assert "ENGINE_DIST_TIMEOUT" in caught.value.render()
    assert not torch.distributed.is_initialized()


def test_dist_timeout_reads_seconds(monkeypatch):
    monkeypatch.setenv("ENGINE_DIST_TIMEOUT", "12.5")
    assert distributed.collective_timeout().total_seconds() == 12.5
    monkeypatch.delenv("ENGINE_DIST_TIMEOUT")
    assert distributed.collective_timeout().total_seconds() == 300


# --- pinning: rebuild what works -------------------------------------------------------------

class Stream(IterableDataset):
    def __iter__(self):
        for i in range(10):
            yield torch.full((3,), float(i)), torch.tensor([float(i)])

    def __len__(self):
        return 10


def test_pinning_keeps_a_custom_batch_sampler():
    """A loader with its own batch_sampler is rebuilt pinned with that very batch_sampler."""
    sampler = BatchSampler(SequentialSampler(range(12)), batch_size=5, drop_last=False)
    loader = DataLoader(Pairs(), batch_sampler=sampler)
    pinned = distributed.rebuild_loader(loader, pin_memory=True)
    assert pinned.pin_memory is True and pinned.batch_sampler is sampler
    unpinned = distributed.rebuild_loader(loader, pin_memory=False)
    assert [len(x) for x, _ in unpinned] == [5, 5, 2]


def test_pinning_an_iterable_dataset_loader():
    """An IterableDataset loader is rebuilt with no sampler; it iterates as before."""
    loader = DataLoader(Stream(), batch_size=4)
    pinned = distributed.rebuild_loader(loader, pin_memory=True)
    assert pinned.pin_memory is True and pinned.dataset is loader.dataset
    assert pinned.batch_size == 4
    batches = list(distributed.rebuild_loader(loader, pin_memory=False))
    assert [len(x) for x, _ in batches] == [4, 4, 2]


def test_pinning_a_plain_loader_keeps_its_sampler_and_collate():
    loader = DataLoader(Pairs(), batch_size=4, shuffle=True, collate_fn=as_defaultdict,
                        drop_last=True)
    pinned = distributed.rebuild_loader(loader, pin_memory=True)
    assert pinned.pin_memory is True and pinned.sampler is loader.sampler
    assert pinned.collate_fn is as_defaultdict and pinned.drop_last and pinned.batch_size == 4


def test_prepare_loaders_on_cuda_pins_every_kind():
    """On a CUDA device type, prepare_loaders pins a batch_sampler loader and an iterable one
    (both refused or raising before)."""
    sampler = BatchSampler(SequentialSampler(range(12)), batch_size=5, drop_last=False)
    loaders = Loaders(train=DataLoader(Pairs(), batch_sampler=sampler),
                      val=DataLoader(Stream(), batch_size=4))
    out = prepare_loaders(recipe, loaders, distributed.World(), torch.device("cuda"), 0)
    assert out.train.pin_memory and out.train.batch_sampler is sampler
    assert out.val.pin_memory and isinstance(out.val.dataset, Stream)


def test_sharding_an_iterable_dataset_is_refused_clearly():
    """Under torchrun an IterableDataset cannot get a DistributedSampler: a UserError."""
    with pytest.raises(UserError) as caught:
        distributed.shard(DataLoader(Stream(), batch_size=4), distributed.World(0, 2, 0), 0,
                          "train")
    assert "IterableDataset" in caught.value.render()


# --- blame: the engine's own code is not the recipe -----------------------------------------

def test_engine_origin_names_the_engine_function():
    """An exception raised in a library called by the engine (tomli_w under to_toml) is the
    engine's; one raised in user code (this file) is not."""
    from engine.core.building import engine_origin, recipe_function
    from engine.io.layering import to_toml

    @attrs.frozen
    class Odd:
        tags: frozenset = frozenset({"a"})

    with pytest.raises(TypeError) as caught:
        to_toml(Odd())
    origin = engine_origin(caught.value)
    assert origin is not None and origin.startswith("engine.io.layering.to_toml (layering.py:")
    import resume_recipe  # a recipe whose code is not in this traceback
    assert recipe_function(caught.value, resume_recipe.recipe) == (
        f"the engine (not the recipe) in {origin}")

    def user_code():
        raise ValueError("mine")

    with pytest.raises(ValueError) as caught:
        user_code()
    assert engine_origin(caught.value) is None
