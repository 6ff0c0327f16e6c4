"""Old-style trainers as recipes, so they can be registered in recipes.toml before a rewrite.

    # recipes/old_ae.py                       # recipes.toml
    from engine.compat.migrate import recipe_from_trainer      [old_ae]
    from mylab.trainers import AETrainer                recipe = "recipes.old_ae:recipe"
    recipe = recipe_from_trainer(AETrainer)

An old trainer holds `config`, `model`, `train_loader`, `val_loader`, `optimizer`, `scheduler`
and a `compute_loss(batch)` or `_forward_batch(batch)` method returning the loss. Given a class
or a factory that builds one from its config, every `fit` builds a fresh trainer from the
resolved config; given a built object, `fit` trains that object's model in place.

The old config (a dataclass or attrs class) becomes the recipe's config: the fields named in
`TRAIN_FIELDS` fill `[train]` (TrainConfig) and keep their old values as defaults; every other
field goes to a `[trainer]` table. Fields whose values TOML cannot hold (a Path-typed
`output_dir` is converted; a function or a tensor is not) keep their old value and are not
configurable. The old optimizer and scheduler are used as they are: a ReduceLROnPlateau steps
once per validation with the validation loss, any other scheduler once per epoch (an attribute
`scheduler_interval = "step"` on the trainer says otherwise). Old trainers run on one process.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import typing
import weakref
from typing import Any

import torch

from engine.compat.old_config import (
    Spec,
    config_class_of,
    old_config,
    snake,
    spec_of,
)
from engine.core.errors import UserError, close_match, describe_value
from engine.core.recipe import Loaders, Recipe, StepOutput
from engine.core.schedules import Schedule

REQUIRED = ("config", "model", "train_loader", "val_loader", "optimizer", "scheduler")
HOOKS = ("compute_loss", "_forward_batch")   # the first one the object has is called

# what a built trainer has already consumed: a config that differs here would silently not apply
BUILT_FROM = ("batch_size", "learning_rate", "weight_decay", "num_workers", "device",
              "lr_decay_factor", "lr_patience")


def recipe_from_trainer(obj: Any, *, name: str | None = None, config: type | None = None
                        ) -> Recipe:
    """A Recipe that trains an old-style trainer: a built object, or a class or factory called
    with the old config (`config=` names the config class when the factory's first parameter
    is not annotated with it). A missing attribute or hook is a UserError naming it."""
    factory, label, old_cfg, config = _inspect(obj, config)
    spec = spec_of(config, old_cfg, label)
    # model / optimizer -> a weak reference to its trainer: a strong one would keep every run's
    # trainer (and its data) alive for ever, since the trainer holds the model. The last few
    # trainers stay alive through `live`; older ones go when nothing else holds them.
    by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    by_optimizer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    live: collections.deque = collections.deque(maxlen=4)
    pending: dict[int, Any] = {}    # id(cfg) -> the trainer build_model made, for build_loaders

    def build(cfg: Any) -> Any:
        if not factory:
            _check_unchanged(spec, cfg, old_cfg, label)
            return obj
        trainer = obj(old_config(spec, cfg))
        _check(trainer, f"{label}(config)")
        return trainer

    def build_model(cfg: Any) -> torch.nn.Module:
        trainer = build(cfg)
        _model_of(trainer, label)
        pending[id(cfg)] = trainer
        _remember(by_model, trainer.model, trainer, live)
        return trainer.model

    def build_loaders(cfg: Any) -> Loaders:
        trainer = pending.pop(id(cfg), None)
        trainer = build(cfg) if trainer is None else trainer
        return Loaders(train=trainer.train_loader, val=trainer.val_loader)

    def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
        trainer = _trainer_of(by_model, model, label, live)
        _remember(by_optimizer, _optimizer_of(trainer, label), trainer, live)
        return trainer.optimizer

    def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> Schedule:
        return _schedule_of(by_optimizer[optimizer](), optimizer)

    def forward_batch(model: torch.nn.Module, batch: Any, ctx: Any) -> Any:
        _one_process(ctx, label)
        trainer = _trainer_of(by_model, model, label, live)
        hook = next(getattr(trainer, h) for h in HOOKS if callable(getattr(trainer, h, None)))
        return _as_output(hook(batch))

    has_scheduler = factory or obj.scheduler is not None
    return Recipe(name=name or snake(label), config=spec.config, build_model=build_model,
                  build_loaders=build_loaders, forward_batch=forward_batch,
                  build_optimizer=build_optimizer,
                  build_scheduler=build_scheduler if has_scheduler else None)


def _inspect(obj: Any, config: type | None) -> tuple[bool, str, Any, type]:
    """(is it a factory, its label, its built config or None, the old config class)."""
    factory = inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, functools.partial)
    label = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if not factory:
        _check(obj, label)
        return False, label, obj.config, type(obj.config)
    if inspect.isclass(obj):   # a function's hooks are known only once it has built one
        _check(obj, label, attributes=False)
    return True, label, None, config or config_class_of(obj, label)


def _optimizer_of(trainer: Any, label: str) -> torch.optim.Optimizer:
    if not isinstance(trainer.optimizer, torch.optim.Optimizer):
        raise UserError(f"{label}.optimizer is not a torch optimizer", where=label,
                        expected="a torch.optim.Optimizer over self.model's parameters",
                        found=describe_value(trainer.optimizer))
    return trainer.optimizer


def _model_of(trainer: Any, label: str) -> torch.nn.Module:
    if not isinstance(trainer.model, torch.nn.Module):
        raise UserError(f"{label}.model is not a torch module", where=label,
                        expected="a torch.nn.Module", found=describe_value(trainer.model))
    return trainer.model


_INTERVALS = ("step", "epoch", "validation")


def _schedule_of(trainer: Any, optimizer: torch.optim.Optimizer) -> Schedule:
    scheduler, label = trainer.scheduler, type(trainer).__qualname__
    if scheduler is None:   # a factory's trainer may have none: a rate that never changes
        return Schedule(torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 0), "epoch")
    # checked here: the loop would only fail at its first scheduler step, as an engine error
    if not callable(getattr(scheduler, "step", None)):
        raise UserError(f"{label}.scheduler is not a learning-rate scheduler", where=label,
                        expected="a torch.optim.lr_scheduler object, or None",
                        found=describe_value(scheduler))
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    interval = getattr(trainer, "scheduler_interval", "validation" if plateau else "epoch")
    if interval not in _INTERVALS:
        raise UserError(f"{label}.scheduler_interval is not an interval", where=label,
                        expected="one of " + ", ".join(_INTERVALS), found=repr(interval),
                        hint=close_match(interval, _INTERVALS) if isinstance(interval, str)
                        else None)
    return Schedule(scheduler, interval)


def _one_process(ctx: Any, label: str) -> None:
    if ctx.world_size > 1:
        raise UserError("old-style trainers run on one process", where=label,
                        expected="python -m engine run (no torchrun)",
                        found=f"world size {ctx.world_size}",
                        hint="rewrite it as a recipe to train with DDP")


# --- checks ------------------------------------------------------------------------------------

def _check(obj: Any, label: str, attributes: bool = True) -> None:
    missing = [a for a in REQUIRED if not hasattr(obj, a)] if attributes else []
    if not any(callable(getattr(obj, h, None)) for h in HOOKS):
        missing.append("compute_loss(batch) or _forward_batch(batch)")
    if missing:
        raise UserError(f"old-style trainer {label} has no {' and no '.join(missing)}",
                        where=f"recipe_from_trainer({label})",
                        expected="attributes " + ", ".join(REQUIRED) + " and a method "
                                 "compute_loss(batch) or _forward_batch(batch) returning the loss",
                        found="missing: " + ", ".join(missing),
                        hint="set it in __init__ (scheduler may be None)")


def _check_unchanged(spec: Spec, cfg: Any, built: Any, label: str) -> None:
    want = old_config(spec, cfg)
    keys = [spec.to_train[f] for f in BUILT_FROM if f in spec.to_train] + list(spec.extras)
    changed = [k for k in keys if getattr(want, k) != getattr(built, k)]
    if changed:
        raise UserError("a built trainer cannot take a different config", where=label,
                        expected=f"the values {label} was built with",
                        found=", ".join(f"{k} = {getattr(want, k)!r} (built with "
                                        f"{getattr(built, k)!r})" for k in changed),
                        hint="register the class or a factory (recipe_from_trainer(MyTrainer))"
                             " so each run builds it from its config")


def _remember(table: Any, key: Any, trainer: Any, live: Any) -> None:
    live.append(trainer)
    try:
        table[key] = weakref.ref(trainer)
    except TypeError:   # a class with __slots__ and no __weakref__: hold it (it stays alive)
        table[key] = lambda: trainer


def _trainer_of(by_model: Any, model: torch.nn.Module, label: str, live: Any) -> Any:
    model = getattr(model, "_orig_mod", model)   # fit may hand it over wrapped by torch.compile
    trainer = by_model[model]() if model in by_model else None
    like = [] if trainer is not None else [
        t for t in (ref() for m, ref in list(by_model.items()) if type(m) is type(model)) if t]
    if like:
        # a copy of a built model (engine check trains one), or one whose trainer is gone: a
        # shallow copy of a trainer over it, with a fresh optimizer of the same kind (the
        # user's trainer is left as it is)
        trainer, old = copy.copy(like[-1]), like[-1].optimizer
        trainer.model = model
        trainer.optimizer = type(old)(model.parameters(), **old.defaults)
        _remember(by_model, model, trainer, live)
    if trainer is None:
        raise UserError("model not built by this recipe", where=label,
                        expected="the model its build_model returned", found=describe_value(model))
    return trainer


def _as_output(out: Any) -> Any:
    """A loss tensor, or a dict {"loss": ..., other scalars} as a StepOutput. Old hooks often
    gave a metric as a number (`mae.item()`): it is kept, as a tensor; other values (a batch
    of predictions, a string) are no metric and are left out."""
    if isinstance(out, typing.Mapping) and "loss" in out:
        device = getattr(out["loss"], "device", None)   # the sums stack metrics with the loss
        metrics = {k: _metric(v, device) for k, v in out.items() if k != "loss"}
        return StepOutput(out["loss"], {k: v for k, v in metrics.items() if v is not None})
    return out


def _metric(value: Any, device: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value if value.dim() == 0 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), device=device)
    return None


