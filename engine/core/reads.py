"""Settings accepted and ignored: which `train.*` settings a recipe's builders read.

`train.warmup_steps`, `step_size`, `gamma`, `momentum`, `min_lr`, `lr_decay_factor`,
`lr_patience` and `weight_decay` exist for particular optimizer and schedule builders; set for
a recipe whose builders never read them (`--set train.warmup_steps=500` with the default
ReduceLROnPlateau), they would change nothing, silently. So the builders are handed the config
with a `train` that records which fields are read (`recording`), and a setting that differs
from its default and that no builder read is a user error (`unread_errors`). `run` (through
`building.build_objects`) and `check` both use them.

The recording train is a real TrainConfig (a subclass instance with the same values): equal
to the plain one, `attrs.evolve` and `attrs.asdict` work on it, it pickles.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import attrs
import torch

from engine.core import optimizers, schedules
from engine.core.config import TrainConfig
from engine.core.errors import UserError

BUILDER_SETTINGS = ("warmup_steps", "step_size", "gamma", "momentum", "min_lr",
                    "lr_decay_factor", "lr_patience", "weight_decay")
_FIELDS = frozenset(f.name for f in attrs.fields(TrainConfig))


class RecordingTrain(TrainConfig):
    """A TrainConfig that notes the name of every field read from it."""

    __slots__ = ("_read",)

    def __getattribute__(self, name: str) -> Any:
        if name in _FIELDS:
            try:
                object.__getattribute__(self, "_read").add(name)
            except AttributeError:   # a copy made by evolve or unpickling: records nothing
                pass
        return object.__getattribute__(self, name)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, TrainConfig):
            return NotImplemented
        get = object.__getattribute__
        return all(get(self, name) == get(other, name) for name in _FIELDS)

    __hash__ = TrainConfig.__hash__


def recording(cfg: Any) -> tuple[Any, set | None]:
    """(`cfg` with a recording train, the set of names it fills), or (cfg, None) when the
    config cannot carry one (its train is not a plain TrainConfig, or it is not attrs)."""
    train = getattr(cfg, "train", None)
    if type(train) is not TrainConfig or not attrs.has(type(cfg)):
        return cfg, None
    copy = RecordingTrain(**{f.alias: getattr(train, f.name)
                             for f in attrs.fields(TrainConfig) if f.init})
    read: set = set()
    object.__setattr__(copy, "_read", read)
    try:
        return attrs.evolve(cfg, train=copy), read
    except Exception:   # a recipe config whose own validators refuse the copy: no check
        return cfg, None


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", "") or ""
    name = getattr(fn, "__qualname__", repr(fn))
    return f"{module.removeprefix('engine.core.')}.{name}" if module else name


def unread_errors(recipe: Any, cfg: Any, read: set | None) -> list[UserError]:
    """A UserError per builder setting that differs from its default and no builder read."""
    if read is None:
        return []
    defaults = TrainConfig()
    ran = ", ".join(f"{attr} {_name(getattr(recipe, attr))}" for attr in (
        "build_model", "build_loaders", "build_optimizer", "build_scheduler")
        if getattr(recipe, attr, None) is not None)
    errors = []
    for key in BUILDER_SETTINGS:
        value, default = getattr(cfg.train, key), getattr(defaults, key)
        if key in read or value == default:
            continue
        readers = known_readers().get(key, ())
        role = "build_optimizer" if readers and readers[0].startswith("optimizers.") \
            else "build_scheduler"
        errors.append(UserError(
            f"train.{key} is set, but none of the recipe's builders reads it",
            where=f"recipe '{recipe.name}': {ran}",
            expected="settings that change the run (this one would be ignored)",
            found=f"{key} = {value!r} (default {default!r})",
            hint=(f"train.{key} is read by {' and '.join(readers)}: make one of them the "
                  f"recipe's {role}, or drop the setting") if readers else "drop the setting"))
    return errors


@functools.cache
def known_readers() -> dict[str, tuple[str, ...]]:
    """Which of the engine's own builders read each builder setting (for the hint)."""
    found: dict[str, list[str]] = {}
    builders = [("optimizers", optimizers.adam), ("optimizers", optimizers.adamw),
                ("optimizers", optimizers.sgd_nesterov),
                ("schedules", schedules.plateau_on_val_loss),
                ("schedules", schedules.warmup_cosine), ("schedules", schedules.step_decay)]
    for kind, build in builders:
        train, read = RecordingTrain(), set()
        object.__setattr__(train, "_read", read)
        cfg = types.SimpleNamespace(train=train)
        model = torch.nn.Linear(1, 1)
        if kind == "optimizers":
            build(cfg, model)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
            if build is schedules.warmup_cosine:
                build(cfg, optimizer, 1)
            else:
                build(cfg, optimizer)
        for key in read & set(BUILDER_SETTINGS):
            found.setdefault(key, []).append(f"{kind}.{build.__name__}")
    return {k: tuple(v) for k, v in found.items()}
