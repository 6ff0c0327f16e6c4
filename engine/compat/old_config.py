"""How an old trainer's config class maps onto a recipe's config: the fields named in
`TRAIN_FIELDS` fill `[train]` (TrainConfig), every other field a `[trainer]` table; and back
(`old_config`) for building the trainer from a resolved config."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import typing
from typing import Any

import attrs
import torch

from engine.core.config import TrainConfig
from engine.core.errors import UserError, describe_value
from engine.io.layering import Layer, build_config

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
_TOML_SCALARS = (str, int, float, bool)


@attrs.frozen
class Spec:
    """How one old config class maps onto the recipe's config."""

    old_cls: type
    to_train: dict          # TrainConfig field -> old field
    extras: tuple           # old fields in the [trainer] table
    old_defaults: dict      # old field -> its default (None, a Path, ...) for the way back
    fixed: dict             # old fields TOML cannot hold: kept at these values
    config: type            # the recipe's config class


def old_config(spec: Spec, cfg: Any) -> Any:
    """The old config object for a resolved recipe config (the inverse of the mapping)."""
    values = dict(spec.fixed)
    for field, old in spec.to_train.items():
        values[old] = _to_old(field, getattr(cfg.train, field), spec.old_defaults.get(old))
    values.update({k: getattr(cfg.trainer, k) for k in spec.extras})
    return spec.old_cls(**values)


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


def spec_of(old_cls: type, values: Any, label: str) -> Spec:
    """The mapping of an old config class (and a built config's values) onto a recipe config."""
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
    return Spec(old_cls, to_train, tuple(extras), old_defaults, fixed, config)


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


def config_class_of(factory: Any, label: str) -> type:
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


def snake(label: str) -> str:
    """A class name as a registry key: `AETrainer` -> `ae_trainer`."""
    name = label.rsplit(".", 1)[-1]   # StepLRTrainer -> step_lr_trainer
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
