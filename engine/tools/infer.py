"""What `engine new --model` infers from the user's classes: the datasets, the model's sizes,
the loss and metrics, and the kind of model (which picks optimizer and schedule); the model's
sizes are `engine.tools.sizes`'.

Each inference keeps the reason it was made (`notes`), so the written recipe can say in its
docstring what was inferred and from what.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch.utils.data import default_collate

from engine.core.building import first_line
from engine.core.errors import UserError, raise_all
from engine.core.preflight import describe
from engine.tools.wire import Fields, Wiring, constructor_params, is_toml_value, shown_fields

VAL_SPLITS = ("val", "valid", "validation", "test")
RANKING_NAMES = ("score", "scores", "relevance", "relevances", "rank", "ranks", "rating",
                 "ratings")


@attrs.frozen(eq=False)
class DataPlan:
    """How the recipe builds its datasets: constructor values, and how validation is split."""

    cls: type
    values: dict            # the [data] table: constructor values (and val_fraction)
    required: tuple[str, ...]   # parameters without a default, given by --set
    kept: tuple[str, ...]   # parameters left to their defaults (not TOML values)
    split: tuple[str, Any, Any] | None   # (parameter, train value, validation value)
    train_set: Any
    sample: Any


@attrs.frozen(eq=False)
class Task:
    """The loss and metrics the contracts call for."""

    kind: str     # classification, regression, reconstruction, ranking
    why: str
    first_output: bool   # forward returns a tuple: its first element is the prediction


def _call(what: str, where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{what} failed: {type(exc).__name__}", where=where,
                        expected="a call that works with these arguments",
                        found=first_line(exc)) from exc


def constructor_values(cls: type, table: str, sets: Mapping[str, Any],
                       skip: tuple[str, ...] = ()) -> tuple[dict, tuple, tuple]:
    """(values, required-and-set names, kept-default names) for a class's constructor; a
    parameter with no default and no `--set TABLE.NAME` is an error."""
    values, required, kept, errors = {}, [], [], []
    for p in constructor_params(cls):
        if p.name in skip:
            continue
        if p.name in sets:
            values[p.name] = sets[p.name]
            required += [p.name] if p.required else []
        elif p.required:
            errors.append(UserError(
                f"{cls.__name__}'s parameter '{p.name}' has no default", where=f"{cls.__module__}"
                f".{cls.__name__}.__init__", expected="a default, or a value given to new",
                found=f"{p.name}: {p.annotation}", hint=f"--set {table}.{p.name}=VALUE"))
        elif is_toml_value(p.default):
            values[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
        else:
            kept.append(p.name)
    raise_all(errors)
    return values, tuple(required), tuple(kept)


def plan_data(cls: type, sets: Mapping[str, Any]) -> DataPlan:
    """Build the training set as the recipe will, and find how the validation set is made."""
    params = {p.name: p for p in constructor_params(cls)}
    split_name = next((n for n in ("split", "train") if n in params), None)
    values, required, kept = constructor_values(cls, "data", sets, skip=(split_name or "",))
    where = f"--dataset {cls.__module__}:{cls.__name__}"
    if split_name is None:
        train_set = _call(f"{cls.__name__}(...)", where, cls, **values)
        values["val_fraction"] = sets.get("val_fraction", 0.2)
        split = None
    else:
        train_value = True if split_name == "train" else "train"
        train_set = _call(f"{cls.__name__}({split_name}={train_value!r})", where, cls,
                          **values, **{split_name: train_value})
        split = (split_name, train_value, _val_value(cls, split_name, values, where))
    n = _call(f"len({cls.__name__})", where, len, train_set)
    if n < (1 if split else 2):
        raise UserError("the dataset is too small to train on", where=where,
                        expected="at least 2 samples", found=f"{n}")
    sample = _call(f"{cls.__name__}[0]", where, train_set.__getitem__, 0)
    return DataPlan(cls, values, required, kept, split, train_set, sample)


def _val_value(cls: type, name: str, values: dict, where: str) -> Any:
    for value in ((False,) if name == "train" else VAL_SPLITS):
        try:
            if len(cls(**values, **{name: value})) > 0:
                return value
        except Exception:   # the next name; refused below when none works
            continue
    raise UserError(f"no validation set from {cls.__name__}'s '{name}' parameter", where=where,
                    expected=f"{name}=" + (" or ".join(repr(v) for v in VAL_SPLITS)
                                           if name == "split" else "False"),
                    found="none of them builds a non-empty dataset")


def collate(samples: list) -> Any:
    """default_collate, and records (attrs, dataclass) field by field."""
    first = samples[0]
    if attrs.has(type(first)) or dataclasses.is_dataclass(first):
        names = ([f.name for f in attrs.fields(type(first))] if attrs.has(type(first))
                 else [f.name for f in dataclasses.fields(first)])
        return type(first)(**{n: default_collate([getattr(s, n) for s in samples])
                              for n in names})
    return default_collate(samples)


# --- the loss --------------------------------------------------------------------------------

def _batched(value: torch.Tensor) -> str:
    """`float32[B, 3]`: a batch's tensor with its batch dimension named."""
    return re.sub(r"\[\d+", "[B", describe(value), count=1)


def infer_task(out: Any, fields: Fields, wiring: Wiring, batch_fields: Fields) -> Task:
    """The loss the output and the target call for; a user error when they call for none."""
    first = isinstance(out, (tuple, list))
    pred = out[0] if first else out
    if not isinstance(pred, torch.Tensor):
        raise UserError("forward does not return a tensor", where="the model's forward",
                        expected="a tensor (or a tuple whose first element is one)",
                        found=type(pred).__name__)
    shown = _batched(pred)
    if wiring.target is None:
        inputs = [batch_fields.get(f) for _, f in wiring.inputs]
        if len(inputs) == 1 and pred.shape == inputs[0].shape and pred.is_floating_point():
            return Task("reconstruction", f"no target, and the output {shown} has the shape "
                        f"of the input {fields.shown(wiring.inputs[0][1])}", first)
        raise _no_loss(shown, "no target field", fields, wiring)
    target = batch_fields.get(wiring.target)
    tshown = f"{fields.shown(wiring.target)} {_batched(target)}"
    if not isinstance(target, torch.Tensor):
        raise _no_loss(shown, f"target {tshown}", fields, wiring)
    integer = not target.is_floating_point() and target.dtype != torch.bool
    if (wiring.target.lower() in RANKING_NAMES and target.dim() == 2 and target.shape[1] > 1
            and pred.shape == target.shape):
        return Task("ranking", f"the target {tshown} holds {wiring.target} over a list of "
                    f"{target.shape[1]}, scored by the output {shown}", first)
    if integer and target.dim() == 1 and pred.dim() == 2 and pred.shape[1] >= 2:
        if int(target.max()) >= pred.shape[1]:
            raise UserError("a class label is beyond the model's logits",
                            where=f"the target {fields.shown(wiring.target)}",
                            expected=f"labels in [0, {pred.shape[1]})",
                            found=f"label {int(target.max())}, logits {shown}",
                            hint="set the model's number of classes with --set model.NAME=N")
        return Task("classification", f"integer class targets {tshown} and logits {shown}",
                    first)
    if target.is_floating_point() and (pred.shape == target.shape or pred.shape == (
            *target.shape, 1)):
        return Task("regression", f"float targets {tshown} shaped like the output {shown}",
                    first)
    raise _no_loss(shown, f"target {tshown}", fields, wiring)


def _no_loss(shown: str, target: str, fields: Fields, wiring: Wiring) -> UserError:
    return UserError(
        "cannot tell which loss the model and the data call for", where="forward's output "
        f"{shown}, {target}", expected="integer labels [B] and logits [B, C]; float targets "
        "shaped like the output; scores/ranks/relevance [B, K] scored by an output [B, K]; or "
        "no target and an output shaped like the one input", found="dataset[0] is "
        + shown_fields(fields), hint="name the target: --map target=FIELD")


# --- the kind --------------------------------------------------------------------------------

def infer_kind(model: torch.nn.Module, task: Task) -> tuple[str, str]:
    """(kind, why): the layers first (convolutions, attention), then the task."""
    names = {type(m).__name__ for m in model.modules()}
    conv = sorted(n for n in names if n.startswith("Conv"))
    attention = sorted(n for n in names if "Attention" in n or n.startswith("Transformer"))
    if conv:
        return "cnn", f"the model has {', '.join(conv)} layers"
    if attention:
        return "transformer", f"the model has {', '.join(attention)} layers"
    if task.kind == "ranking":
        return "ranking", "a ranking target and no convolution or attention layer"
    if task.kind == "reconstruction":
        return "autoencoder", "a reconstruction and no convolution or attention layer"
    return "mlp", "no convolution or attention layer"
