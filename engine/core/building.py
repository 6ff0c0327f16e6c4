"""Building a run from a recipe: check the inputs, call the recipe's builders (their mistakes
become user errors, exit code 2), prepare the loaders, restore a checkpoint."""

from __future__ import annotations

import inspect
import math
import random
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any

import torch

import steps
from engine.core import distributed, reads
from engine.core.errors import UserError, UserErrors, describe_value, first_line, raise_all
from engine.core.recipe import Loaders, Recipe
from engine.core.schedules import Schedule


def check_inputs(recipe: Any, cfg: Any) -> None:
    """`fit`'s arguments are a Recipe and a config of its class, with a train table."""
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
    """Seed Python's, torch's and (if imported) NumPy's global RNGs."""
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


def where_in_recipe(recipe: Recipe, attr: str) -> str:
    """`recipe 'x' build_model (module.function)`: where a message points."""
    fn = getattr(recipe, attr)
    module = getattr(fn, "__module__", "?")
    return f"recipe '{recipe.name}' {attr} ({module}.{getattr(fn, '__qualname__', fn)})"


def build_objects(recipe: Recipe, cfg: Any, world: Any, device: torch.device) -> tuple:
    """(model, loaders, optimizer, schedule) as every run builds them, in this order from the
    seed: the model on `device`, the loaders checked (and sharded under torchrun)."""
    seed_everything(cfg.train.seed)
    # the builders see a config that notes which train settings they read (engine.core.reads)
    view, read = reads.recording(cfg)
    model = checked_model(recipe, call_recipe(recipe, "build_model", view))
    loaders = prepare_loaders(recipe, call_recipe(recipe, "build_loaders", view), world, device,
                              cfg.train.seed)
    model.to(device)
    optimizer = call_recipe(recipe, "build_optimizer", view, model)
    schedule = build_schedule(recipe, view, optimizer, loaders.train)
    raise_all(reads.unread_errors(recipe, cfg, read))
    return model, loaders, optimizer, schedule


def checked_model(recipe: Recipe, model: Any) -> torch.nn.Module:
    """What build_model returned, if it is an nn.Module; a UserError otherwise."""
    if not isinstance(model, torch.nn.Module):
        raise UserError("build_model did not return a torch.nn.Module",
                        where=where_in_recipe(recipe, "build_model"), expected="an nn.Module",
                        found=describe_value(model))
    return model


def call_recipe(recipe: Recipe, attr: str, *args: Any) -> Any:
    """Call a recipe builder; what it raises is the recipe's mistake (exit code 2), named by
    function and line."""
    try:
        return getattr(recipe, attr)(*args)
    except (UserError, UserErrors):
        raise
    except Exception as exc:
        frame = user_frame(exc)
        raise UserError(f"{attr} raised {type(exc).__name__}",
                        where=where_in_recipe(recipe, attr) + (f" at {frame}" if frame else ""),
                        expected=f"{attr} to work from the config",
                        found=first_line(exc)) from exc


def user_frame(exc: BaseException) -> str | None:
    """`bad_recipes.py:67 in forward_batch`: the innermost frame outside torch and the engine."""
    skip = [str(Path(m.__file__).parent) for m in (torch, steps) if getattr(m, "__file__", None)]
    skip.append(str(Path(__file__).parent))   # the engine
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not any(frame.filename.startswith(s) for s in skip):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return None




def build_schedule(recipe: Recipe, cfg: Any, optimizer, train_loader: Any) -> Any:
    """The recipe's Schedule, or None. A builder with a `steps_per_epoch` parameter gets the
    optimizer steps per epoch: ceil(batches / grad_accum_steps)."""
    build = recipe.build_scheduler
    if build is None:
        return None
    try:
        takes_steps = "steps_per_epoch" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        takes_steps = False
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum_steps)
    extra = (steps_per_epoch,) if takes_steps else ()
    schedule = call_recipe(recipe, "build_scheduler", cfg, optimizer, *extra)
    if not isinstance(schedule, Schedule):
        raise UserError("build_scheduler did not return a Schedule", where=where_in_recipe(
            recipe, "build_scheduler"), expected='Schedule(scheduler, interval="step"|"epoch"|'
            '"validation")', found=describe_value(schedule))
    return schedule


def loader_sizes(recipe: Recipe, loaders: Any) -> dict[str, tuple[int, str]]:
    """Batches per epoch and a description of the training and validation loaders; an empty
    or unsized loader is a user error (both reported when both are wrong)."""
    if not (hasattr(loaders, "train") and hasattr(loaders, "val")):
        raise UserError("build_loaders did not return Loaders", where=where_in_recipe(
            recipe, "build_loaders"), expected="Loaders(train=DataLoader, val=DataLoader)",
            found=describe_value(loaders))
    sizes, errors = {}, []
    for which, loader in (("training", loaders.train), ("validation", loaders.val)):
        try:
            sizes[which] = _loader_size(recipe, loader, which)
        except UserError as exc:
            errors.append(exc)
    raise_all(errors)
    return sizes


def _loader_size(recipe: Any, loader: Any, which: str) -> tuple[int, str]:
    try:
        n = len(loader)
    except TypeError:
        raise UserError(f"the {which} loader has no length", where=where_in_recipe(
            recipe, "build_loaders"), expected="a DataLoader over a sized dataset",
            found=describe_value(loader)) from None
    dataset = getattr(loader, "dataset", None)
    samples = len(dataset) if hasattr(dataset, "__len__") else "?"
    facts = (f"{samples} samples, batch_size {getattr(loader, 'batch_size', '?')}, drop_last "
             f"{getattr(loader, 'drop_last', '?')}")
    if n == 0:
        hint = ("the batch size is larger than the dataset and drop_last drops the only, "
                "partial batch: lower train.batch_size or set drop_last=False"
                if getattr(loader, "drop_last", False) and samples != 0 else
                "the dataset is empty: check the data path and filters in build_loaders")
        raise UserError(f"the {which} loader is empty", where=where_in_recipe(
            recipe, "build_loaders"), expected="at least one batch", found=f"0 batches ({facts})",
            hint=hint)
    return n, facts


def prepare_loaders(recipe: Recipe, loaders: Any, world, device, seed: int) -> Loaders:
    """The recipe's loaders, checked, sharded across ranks under torchrun, pinned on CUDA."""
    loader_sizes(recipe, loaders)
    train, val = loaders.train, loaders.val
    train = distributed.shard(train, world, seed, "train")
    val = distributed.shard(val, world, seed, "val")
    if device.type == "cuda" and recipe.move_batch:
        # pinned host memory lets the copy to the GPU overlap with compute (non_blocking)
        train = distributed.rebuild_loader(train, pin_memory=True)
        val = distributed.rebuild_loader(val, pin_memory=True, which="val")
    return Loaders(train=train, val=val)


def recipe_function(exc: BaseException, recipe: Recipe) -> str:
    """Name the recipe function an exception came from (the innermost one in the traceback):
    `recipe 'x' forward_batch`, or `recipe 'x' (called from the loop)` when none is."""
    codes = {}
    for attr in ("forward_batch", "build_model", "build_loaders", "build_optimizer",
                 "build_scheduler"):
        code = getattr(getattr(recipe, attr, None), "__code__", None)
        if code is not None:
            codes[code] = attr
    name = None
    tb = exc.__traceback__
    while tb is not None:
        name = codes.get(tb.tb_frame.f_code, name)
        tb = tb.tb_next
    if name is not None:
        return f"recipe '{recipe.name}' {name}"
    module = getattr(recipe.forward_batch, "__module__", "")
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if module and module.replace(".", "/") in frame.filename.replace("\\", "/"):
            return f"recipe '{recipe.name}' {frame.name}"
    engine_frame = engine_origin(exc)
    if engine_frame is not None:
        return f"the engine (not the recipe) in {engine_frame}"
    return f"recipe '{recipe.name}' (called from the loop)"


def blame(exc: BaseException, recipe: Recipe, world: Any) -> str:
    """The failure message of a run that recipe code (or a collective) ended."""
    where = recipe_function(exc, recipe)
    if world.active and where.endswith("(called from the loop)"):
        # under torchrun a collective breaks here when another rank died: its own error is on
        # its stderr; say so rather than blame this rank's recipe
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return (f"rank {world.rank}: a collective failed, most likely because another rank "
                f"stopped (its error is in torchrun's output): {type(exc).__name__}: {first}")
    return f"{where} raised {type(exc).__name__}: {exc}"


_ENGINE = Path(__file__).resolve().parents[1]   # the engine package


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):
        return True
    paths = sysconfig.get_paths()
    return any(filename.startswith(paths[k]) for k in ("stdlib", "platstdlib", "purelib",
                                                        "platlib"))


def engine_origin(exc: BaseException) -> str | None:
    """`engine.io.writers.write_config (writers.py:40)` when the innermost frame outside
    libraries (the standard library, site-packages) is the engine's own code, else None."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_ENGINE):
            module = ".".join(("engine", *path.relative_to(_ENGINE).with_suffix("").parts))
            if module == "engine.core.distributed":
                return None   # a collective broken by another rank: the loop says so
            return f"{module}.{frame.name} ({path.name}:{frame.lineno})"
        if not _is_library(frame.filename):
            return None   # user code (a callback, a model module) raised it
    return None
