"""Building a run from a recipe: check the inputs, call the recipe's builders (their mistakes
become user errors, exit code 2), prepare the loaders, restore a checkpoint."""

from __future__ import annotations

import inspect
import random
import sys
from pathlib import Path
from typing import Any

import attrs
import torch

from engine import checkpoint as ckpt
from engine import distributed
from engine.book import load_objects
from engine.errors import UserError, describe_value
from engine.recipe import Loaders, Recipe, Schedule
from engine.state import EpochTotals, LoopState, Run, loop_state_from_dict


def check_inputs(recipe: Any, cfg: Any) -> None:
    if not isinstance(recipe, Recipe):
        raise UserError("fit needs a Recipe", where="fit(recipe, ...)",
                        expected="an engine.Recipe", found=describe_value(recipe))
    if not isinstance(cfg, recipe.config):
        raise UserError("the config does not belong to the recipe", where="fit(..., cfg)",
                        expected=f"an instance of {recipe.config.__name__}",
                        found=describe_value(cfg))
    if not hasattr(cfg, "train"):
        raise UserError("the recipe's config has no train table", where=recipe.config.__name__,
                        expected="a field `train: TrainConfig`", found="no such field")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


def where_in_recipe(recipe: Recipe, attr: str) -> str:
    fn = getattr(recipe, attr)
    module = getattr(fn, "__module__", "?")
    return f"recipe '{recipe.name}' {attr} ({module}.{getattr(fn, '__qualname__', fn)})"


def call_recipe(recipe: Recipe, attr: str, *args: Any) -> Any:
    """Call a recipe builder; an exception in it is the recipe's mistake (exit code 2)."""
    try:
        return getattr(recipe, attr)(*args)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{attr} raised {type(exc).__name__}", where=where_in_recipe(recipe, attr),
                        expected=f"{attr} to build from the config",
                        found=f"{type(exc).__name__}: {exc}") from exc


def build_schedule(recipe: Recipe, cfg: Any, optimizer, steps_per_epoch: int) -> Any:
    build = recipe.build_scheduler
    if build is None:
        return None
    try:
        takes_steps = "steps_per_epoch" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        takes_steps = False
    extra = (steps_per_epoch,) if takes_steps else ()
    schedule = call_recipe(recipe, "build_scheduler", cfg, optimizer, *extra)
    if not isinstance(schedule, Schedule):
        raise UserError("build_scheduler did not return a Schedule", where=where_in_recipe(
            recipe, "build_scheduler"), expected='Schedule(scheduler, interval="step"|"epoch"|'
            '"validation")', found=describe_value(schedule))
    return schedule


def prepare_loaders(recipe: Recipe, loaders: Any, world, device, seed: int) -> Loaders:
    if not (hasattr(loaders, "train") and hasattr(loaders, "val")):
        raise UserError("build_loaders did not return Loaders", where=where_in_recipe(
            recipe, "build_loaders"), expected="Loaders(train=DataLoader, val=DataLoader)",
            found=describe_value(loaders))
    train, val = loaders.train, loaders.val
    for which, loader in (("training", train), ("validation", val)):
        try:
            size = len(loader)
        except TypeError:
            raise UserError(f"the {which} loader has no length", where=where_in_recipe(
                recipe, "build_loaders"), expected="a DataLoader over a sized dataset",
                found=describe_value(loader)) from None
        if size == 0:
            dataset = getattr(loader, "dataset", None)
            n = len(dataset) if hasattr(dataset, "__len__") else "?"
            raise UserError(f"the {which} loader is empty",
                            where=where_in_recipe(recipe, "build_loaders"),
                            expected="at least one batch",
                            found=f"0 batches ({n} samples, batch_size "
                                  f"{getattr(loader, 'batch_size', '?')}, drop_last "
                                  f"{getattr(loader, 'drop_last', '?')})")
    train = distributed.shard(train, world, seed, "train")
    val = distributed.shard(val, world, seed, "val")
    if device.type == "cuda" and recipe.move_batch:
        # pinned host memory lets the copy to the GPU overlap with compute (non_blocking)
        train = distributed.rebuild_loader(train, pin_memory=True)
        val = distributed.rebuild_loader(val, pin_memory=True, which="val")
    return Loaders(train=train, val=val)


def restore(run: Run, path: str | Path) -> tuple[LoopState, Any]:
    data = ckpt.load(path)
    ckpt.check_matches(data, path, run.name, run.model)
    load_objects(run, data)
    state = loop_state_from_dict(data["loop"], run)
    totals = data["loop"].get("totals")
    state = attrs.evolve(state, totals=EpochTotals(**totals) if totals else EpochTotals(),
                         epoch_rng=data.get("epoch_rng"))
    return state, data["rng"]


def best_weights_beside(path: str | Path, state: LoopState) -> dict | None:
    """A resumed run's best weights so far, from the best.pt beside its checkpoint, so that the
    returned model is the best one even when the resume never improves on it."""
    best = Path(path).with_name("best.pt")
    if state.best_epoch is None or not best.is_file():
        return None
    data = ckpt.load(best)
    if (data.get("loop") or {}).get("best_epoch") != state.best_epoch:
        return None
    return data["model"]


