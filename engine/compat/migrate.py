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
import dataclasses
import functools
import inspect
import os
import re
import typing
import weakref
from typing import Any

import attrs
import torch

from engine.core.config import TrainConfig
from engine.core.errors import UserError, describe_value
from engine.core.recipe import Loaders, Recipe, StepOutput
from engine.core.schedules import Schedule
from engine.io.layering import Layer, build_config

REQUIRED = ("config", "model", "train_loader", "val_loader", "optimizer", "scheduler")
HOOKS = ("compute_loss", "_forward_batch")   # the first one the object has is called

# TrainConfig field <- old config field names, the first one present wins; a second one present
# (say both `epochs` and `num_epochs`) stays in the [trainer] table
TRAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "epochs": ("num_epochs", "epochs", "n_epochs", "max_epochs"),
    "batch_size": ("batch_size",),
    "learning_rate": ("learning_rate", "lr"),
    "weight_decay": ("weight_decay",),
    "num_workers": ("num_workers",),
    "gradient_clip_value": ("gradient_clip_value", "grad_clip", "max_grad_norm", "clip_grad_norm"),
    "validate_every_n_epochs": ("validate_every_n_epochs", "val_every_n_epochs", "eval_every"),
    "early_stopping_patience": ("early_stopping_patience", "patience"),
    "early_stopping_min_delta": ("early_stopping_min_delta", "min_delta"),
    "lr_decay_factor": ("lr_decay_factor", "lr_factor"),
    "lr_patience": ("lr_patience", "scheduler_patience"),
    "seed": ("seed", "random_seed"),
    "device": ("device",),
    "output_dir": ("output_dir", "save_dir", "model_save_dir", "checkpoint_dir"),
    "log_every_n_steps": ("log_every_n_steps", "log_interval"),
    "grad_accum_steps": ("grad_accum_steps", "gradient_accumulation_steps"),
}
# old configs say "off" / "choose for me" with None; TrainConfig says it with these values
NONE_MEANS = {"gradient_clip_value": 0.0, "early_stopping_patience": 0, "device": "auto"}
# what a built trainer has already consumed: a config that differs here would silently not apply
BUILT_FROM = ("batch_size", "learning_rate", "weight_decay", "num_workers", "device",
              "lr_decay_factor", "lr_patience")
_TOML_SCALARS = (str, int, float, bool)


@attrs.frozen
class _Spec:
    """How one old config class maps onto the recipe's config."""

    old_cls: type
    to_train: dict          # TrainConfig field -> old field
    extras: tuple           # old fields in the [trainer] table
    old_defaults: dict      # old field -> its default (None, a Path, ...) for the way back
    fixed: dict             # old fields TOML cannot hold: kept at these values
    config: type            # the recipe's config class


def recipe_from_trainer(obj: Any, *, name: str | None = None, config: type | None = None
                        ) -> Recipe:
    """A Recipe that trains an old-style trainer: a built object, or a class or factory called
    with the old config (`config=` names the config class when the factory's first parameter
    is not annotated with it). A missing attribute or hook is a UserError naming it."""
    factory = inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, functools.partial)
    label = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if factory:
        if inspect.isclass(obj):   # a function's hooks are known only once it has built one
            _check(obj, label, attributes=False)
        old_cfg = None
        config = config or _config_class_of(obj, label)
    else:
        _check(obj, label)
        old_cfg = obj.config
        config = type(old_cfg)
    spec = _spec(config, old_cfg, label)
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
        pending[id(cfg)] = trainer
        _remember(by_model, trainer.model, trainer, live)
        return trainer.model

    def build_loaders(cfg: Any) -> Loaders:
        trainer = pending.pop(id(cfg), None)
        trainer = build(cfg) if trainer is None else trainer
        return Loaders(train=trainer.train_loader, val=trainer.val_loader)

    def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
        trainer = _trainer_of(by_model, model, label, live)
        if not isinstance(trainer.optimizer, torch.optim.Optimizer):
            raise UserError(f"{label}.optimizer is not a torch optimizer", where=label,
                            expected="a torch.optim.Optimizer over self.model's parameters",
                            found=describe_value(trainer.optimizer))
        _remember(by_optimizer, trainer.optimizer, trainer, live)
        return trainer.optimizer

    def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> Schedule:
        trainer = by_optimizer[optimizer]()
        scheduler = trainer.scheduler
        if scheduler is None:   # a factory's trainer may have none: a rate that never changes
            return Schedule(torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 0), "epoch")
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        return Schedule(scheduler, getattr(trainer, "scheduler_interval",
                                           "validation" if plateau else "epoch"))

    def forward_batch(model: torch.nn.Module, batch: Any, ctx: Any) -> Any:
        if ctx.world_size > 1:
            raise UserError("old-style trainers run on one process", where=label,
                            expected="python -m engine run (no torchrun)",
                            found=f"world size {ctx.world_size}",
                            hint="rewrite it as a recipe to train with DDP")
        trainer = _trainer_of(by_model, model, label, live)
        hook = next(getattr(trainer, h) for h in HOOKS if callable(getattr(trainer, h, None)))
        return _as_output(hook(batch))

    has_scheduler = factory or obj.scheduler is not None
    return Recipe(name=name or _snake(label), config=spec.config, build_model=build_model,
                  build_loaders=build_loaders, forward_batch=forward_batch,
                  build_optimizer=build_optimizer,
                  build_scheduler=build_scheduler if has_scheduler else None)


def old_config(spec: _Spec, cfg: Any) -> Any:
    """The old config object for a resolved recipe config (the inverse of the mapping)."""
    values = dict(spec.fixed)
    for field, old in spec.to_train.items():
        values[old] = _to_old(field, getattr(cfg.train, field), spec.old_defaults.get(old))
    values.update({k: getattr(cfg.trainer, k) for k in spec.extras})
    return spec.old_cls(**values)


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


def _check_unchanged(spec: _Spec, cfg: Any, built: Any, label: str) -> None:
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
    """A loss tensor, or a dict {"loss": ..., other scalar tensors} as a StepOutput."""
    if isinstance(out, typing.Mapping) and "loss" in out:
        return StepOutput(out["loss"], {k: v for k, v in out.items() if k != "loss"
                                        and isinstance(v, torch.Tensor) and v.dim() == 0})
    return out


# --- the config mapping ------------------------------------------------------------------------

def _fields(cls: type, label: str) -> list[tuple[str, Any, Any]]:
    """(name, type, default or attrs.NOTHING) of each init field of a dataclass or attrs class."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:   # an annotation that does not resolve: take the values as they come
        hints = {}
    if dataclasses.is_dataclass(cls):
        out = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else attrs.NOTHING)
            out.append((f.name, hints.get(f.name, Any), default))
        return out
    if attrs.has(cls):
        return [(a.name, hints.get(a.name, Any),
                 a.default.factory() if isinstance(a.default, attrs.Factory) else a.default)
                for a in attrs.fields(cls) if a.init]
    raise UserError(f"the config of {label} is not a dataclass", where=label,
                    expected="a dataclass or attrs class (BaseTrainerConfig style)",
                    found=describe_value(cls))


def _spec(old_cls: type, values: Any, label: str) -> _Spec:
    fields = _fields(old_cls, label)
    if values is not None:   # a built trainer: its config's values are the defaults
        fields = [(n, t, getattr(values, n)) for n, t, _ in fields]
    names = {n for n, _, _ in fields}
    to_train = {}
    for field, olds in TRAIN_FIELDS.items():
        old = next((o for o in olds if o in names and o not in to_train.values()), None)
        if old is not None:
            to_train[field] = old
    defaults = {f: _to_new(f, d) for f, o in to_train.items()
                for n, _, d in fields if n == o and d is not attrs.NOTHING}
    extras, fixed, table = [], {}, {}
    for n, tp, default in fields:
        if n in to_train.values():
            continue
        if default is not attrs.NOTHING and not _tomlable(default):
            fixed[n] = default
            continue
        extras.append(n)
        table[n] = attrs.field(type=tp, default=default)
    train_cls = _train_class(defaults)
    # the old values must pass TrainConfig's strict types and ranges, as any [train] table does
    build_config(train_cls, [Layer({f: v}, f"{old_cls.__qualname__}.{to_train[f]} (as train.{f})")
                             for f, v in defaults.items()])
    trainer_cls = attrs.make_class(f"{old_cls.__name__}Fields", table, frozen=True,
                                   kw_only=True)
    required = any(d is attrs.NOTHING for n, _, d in fields if n in extras)
    config = attrs.make_class(f"{old_cls.__name__}Recipe", {
        "train": attrs.field(type=train_cls, default=attrs.Factory(train_cls)),
        "trainer": attrs.field(type=trainer_cls, default=attrs.NOTHING if required
                               else attrs.Factory(trainer_cls))}, frozen=True)
    old_defaults = {n: d for n, _, d in fields if n in to_train.values()}
    return _Spec(old_cls, to_train, tuple(extras), old_defaults, fixed, config)


def _train_class(defaults: dict) -> type:
    """TrainConfig with other defaults. A generated subclass, not a hierarchy: it carries the
    old config's values as defaults, so setting one [train] key keeps the others' old values
    (and isinstance(cfg.train, TrainConfig) holds for every consumer)."""
    attrs.resolve_types(TrainConfig)
    # every field redeclared, so the fields keep TrainConfig's order (config.toml reads the same)
    own = {a.name: attrs.field(type=a.type, validator=a.validator,
                               default=defaults.get(a.name, a.default))
           for a in attrs.fields(TrainConfig)}
    return attrs.make_class("TrainConfig", own, bases=(TrainConfig,), frozen=True, slots=True)


def _to_new(field: str, value: Any) -> Any:
    if value is None and field in NONE_MEANS:
        return NONE_MEANS[field]
    if isinstance(value, (os.PathLike, torch.device)):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and \
            isinstance(getattr(TrainConfig(), field), float):
        return float(value)
    return value


def _to_old(field: str, value: Any, default: Any) -> Any:
    if default is None and field in NONE_MEANS and value == NONE_MEANS[field]:
        return None
    if isinstance(default, (os.PathLike, torch.device)):
        return type(default)(value)
    return value


def _tomlable(value: Any) -> bool:
    if value is None or isinstance(value, _TOML_SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(_tomlable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _tomlable(v) for k, v in value.items())
    return False


def _config_class_of(factory: Any, label: str) -> type:
    """The config class a factory takes: its first parameter's annotation, or its default."""
    try:
        params = list(inspect.signature(factory).parameters.values())
        target = factory.__init__ if inspect.isclass(factory) else factory
        hints = typing.get_type_hints(target)
    except (TypeError, ValueError, NameError):
        params, hints = [], {}
    if params:
        tp = hints.get(params[0].name)
        for candidate in (*typing.get_args(tp), tp, type(params[0].default)):
            if dataclasses.is_dataclass(candidate) or attrs.has(candidate):
                return candidate
    raise UserError(f"cannot tell which config class {label} takes", where=label,
                    expected="a first parameter annotated with its config dataclass",
                    found=f"parameters {[p.name for p in params]}",
                    hint=f"recipe_from_trainer({label}, config=MyConfig)")


def _snake(label: str) -> str:
    name = label.rsplit(".", 1)[-1]   # StepLRTrainer -> step_lr_trainer
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
