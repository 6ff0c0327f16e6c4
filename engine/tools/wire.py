"""Reading the contracts of a user's model and dataset classes for `engine new --model`.

What `new` needs to know before it can write a recipe around them: the classes themselves
(`module:Class` specs), their constructor parameters, the structure of `dataset[0]`, and how
the fields of a batch reach the parameters of `forward` (by name, by position, or by `--map`).
Everything here reads; nothing is written (loss and kind: engine.tools.infer; sizes:
engine.tools.sizes; the text: render_code, render_step; checks and writing: new_from_code).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from engine.core.errors import UserError, close_match, raise_all
from engine.core.preflight import describe

NO_VALUE = object()   # a parameter without a default (attrs.NOTHING reads badly in messages)
TOML_SCALARS = (bool, int, float, str)
TARGET_NAMES = ("target", "targets", "label", "labels", "y", "class", "cls", "score", "scores",
                "relevance", "relevances", "rank", "ranks", "rating", "ratings")
MASK_NAMES = ("mask", "valid", "observed")


@attrs.frozen
class Param:
    """One constructor parameter: its name, annotation text (for config.py) and default."""

    name: str
    annotation: str
    default: Any = NO_VALUE

    @property
    def required(self) -> bool:
        """Whether the parameter has no default."""
        return self.default is NO_VALUE


@attrs.frozen
class Fields:
    """The structure of one sample: `dict`, `record` (attrs or dataclass), `tuple` or `tensor`;
    `names` are its keys, field names or positions ("0", "1", ...)."""

    kind: str
    names: tuple[str, ...]
    values: tuple[Any, ...]
    record_type: Any = None

    def get(self, name: str) -> Any:
        """The field named `name`."""
        return self.values[self.names.index(name)]

    def expr(self, name: str) -> str:
        """How generated code reads the field `name` from a batch."""
        if self.kind == "dict":
            return f"batch[{json.dumps(name)}]"
        if self.kind == "record":
            return f"batch.{name}"
        if self.kind == "tuple":
            return f"batch[{name}]"
        return "batch"

    def shown(self, name: str) -> str:
        """The fields as a message shows them: `batch["image"]: float32[12], ...`."""
        return "the batch" if self.kind == "tensor" else self.expr(name)


@attrs.frozen
class Wiring:
    """Which batch field feeds each forward parameter, and which is the target (and mask)."""

    inputs: tuple[tuple[str, str], ...]
    target: str | None
    mask: str | None
    how: str


def load_class(spec: str, flag: str, base: type, what: str) -> type:
    """The class a `module:Class` spec names, checked to be a subclass of `base` (a Dataset
    may also be any class with __getitem__ and __len__)."""
    where = f"{flag} {spec}"
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise UserError(f"{flag} needs MODULE:CLASS", where=where, expected=f"e.g. {flag} "
                        f"my_{'model' if base is torch.nn.Module else 'data'}:MyClass",
                        found=repr(spec), hint="name the class after a colon")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing and module_name.startswith(missing):
            raise UserError(f"module '{module_name}' not found", where=where,
                            expected="a module importable from here or from PYTHONPATH",
                            found=f"no module named '{missing}'",
                            hint="run from the folder that holds it, or add that folder to "
                            "PYTHONPATH") from None
        raise UserError(f"module '{module_name}' does not import", where=where,
                        expected="a module that imports cleanly",
                        found=f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        names = [n for n, v in vars(module).items() if inspect.isclass(v)
                 and v.__module__ == module.__name__]
        raise UserError(f"'{module_name}' has no class '{attr}'", where=where,
                        expected=f"one of its classes: {', '.join(names) or '(none)'}",
                        found=attr, hint=close_match(attr, names))
    is_dataset = inspect.isclass(cls) and (issubclass(cls, base) or (
        base is torch.utils.data.Dataset and hasattr(cls, "__getitem__")
        and hasattr(cls, "__len__")))
    if not inspect.isclass(cls) or not is_dataset:
        raise UserError(f"'{spec}' is not {what}", where=where, expected=what,
                        found=repr(cls)[:100])
    if base is torch.nn.Module and cls.forward is torch.nn.Module.forward:   # torch says less
        raise UserError(f"'{spec}' has no forward method", where=where, expected="a forward"
                        "(self, ...) method", found=f"{cls.__name__} defines none, nor its bases")
    return cls


def constructor_params(cls: type) -> tuple[Param, ...]:
    """The parameters of `cls.__init__` (self, *args and **kwargs left out)."""
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return ()
    params = []
    for p in list(signature.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = NO_VALUE if p.default is p.empty else p.default
        params.append(Param(p.name, annotation_text(p.annotation, default), default))
    return tuple(params)


def forward_params(cls: type) -> tuple[list[str], list[str]]:
    """forward's (required, optional) parameter names, self and *args/**kwargs left out."""
    signature = inspect.signature(cls.forward)
    required, optional = [], []
    for p in list(signature.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        (required if p.default is p.empty else optional).append(p.name)
    return required, optional


_SIMPLE = {"int", "float", "str", "bool", "int | None", "float | None", "str | None",
           "bool | None", "tuple[int, ...]", "tuple[float, ...]", "tuple[str, ...]"}


def annotation_text(annotation: Any, default: Any) -> str:
    """A config.py annotation for a parameter: its own when it is a plain TOML type, else one
    read from the default's type."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    if isinstance(annotation, str) or annotation in TOML_SCALARS:
        text = text.replace("Optional[", "").rstrip("]") + " | None" \
            if text.startswith("Optional[") else text
        if text in _SIMPLE:
            return text
    if isinstance(default, TOML_SCALARS):
        return type(default).__name__
    if isinstance(default, (tuple, list)) and default and all(
            type(v) is type(default[0]) and isinstance(v, TOML_SCALARS) for v in default):
        return f"tuple[{type(default[0]).__name__}, ...]"
    return text if text in _SIMPLE else "Any"


def is_toml_value(value: Any) -> bool:
    """Whether a default can be written to TOML (and so become a config field)."""
    if isinstance(value, TOML_SCALARS):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(
        isinstance(v, TOML_SCALARS) for v in value)


def sample_fields(sample: Any, where: str) -> Fields:
    """The fields of `dataset[0]`."""
    if isinstance(sample, Mapping):
        return Fields("dict", tuple(str(k) for k in sample), tuple(sample.values()))
    if attrs.has(type(sample)):
        names = tuple(f.name for f in attrs.fields(type(sample)))
        return Fields("record", names, tuple(getattr(sample, n) for n in names), type(sample))
    if dataclasses.is_dataclass(sample) and not isinstance(sample, type):
        names = tuple(f.name for f in dataclasses.fields(sample))
        return Fields("record", names, tuple(getattr(sample, n) for n in names), type(sample))
    if isinstance(sample, (tuple, list)):
        return Fields("tuple", tuple(str(i) for i in range(len(sample))), tuple(sample))
    if isinstance(sample, torch.Tensor):
        return Fields("tensor", ("batch",), (sample,))
    raise UserError("dataset[0] is not a structure a batch can be read from", where=where,
                    expected="a dict, an attrs/dataclass record, a tuple or a tensor",
                    found=type(sample).__name__)


def first_of(batch: Fields) -> Fields:
    """A batch's fields with the batch dimension taken off: one sample as the loader gives it."""
    values = tuple(v[0] if isinstance(v, torch.Tensor) and v.dim() else v for v in batch.values)
    return attrs.evolve(batch, values=values)


def shown_fields(fields: Fields) -> str:   # the batch's fields for a message
    return ", ".join(f"{fields.shown(n)}: {describe(fields.get(n))}" for n in fields.names)


# --- the batch to forward's parameters -------------------------------------------------------

def parse_maps(maps: Sequence[str]) -> dict[str, str]:
    """`--map ARG=FIELD` flags as a dict; a malformed one is a UserError."""
    out = {}
    for flag in maps:
        arg, sep, key = flag.partition("=")
        if not sep or not arg.strip() or not key.strip():
            raise UserError("--map needs FORWARD_ARG=BATCH_KEY", where=f"--map {flag}",
                            expected="e.g. --map image=img_features", found=repr(flag))
        out[arg.strip()] = key.strip()
    return out


def wire(fields: Fields, required: list[str], optional: list[str],
         maps: Mapping[str, str]) -> Wiring:
    """Place the batch fields on forward's parameters; a user error when it cannot be done."""
    bad = [UserError(f"--map names no batch field '{key}'", where=f"--map {arg}={key}",
                     expected="one of " + ", ".join(fields.names), found=key,
                     hint=close_match(key, fields.names))
           for arg, key in maps.items() if key not in fields.names]
    bad += [UserError(f"--map names no parameter '{arg}' of forward", where=f"--map {arg}={key}",
                      expected="one of " + ", ".join([*required, *optional, "target", "mask"]),
                      found=arg, hint=close_match(arg, [*required, *optional]))
            for arg, key in maps.items()
            if arg not in (*required, *optional, "target", "mask")]
    raise_all(bad)
    if fields.kind in ("tuple", "tensor"):
        placed, target, how = _by_position(fields, required, maps)
    else:
        placed, target, how = _by_name(fields, required, optional, maps)
    missing = [a for a in required if a not in placed]
    if missing:
        raise _unplaced(fields, required, optional, placed, missing)
    used = set(placed.values())
    target = maps.get("target", target)
    mask = maps.get("mask") or next((n for n in fields.names if n.lower() in MASK_NAMES
                                     and n not in used and n != target), None)
    inputs = tuple((a, placed[a]) for a in [*required, *optional] if a in placed)
    return Wiring(inputs, target, mask, how)


def _by_position(fields: Fields, required: list[str],
                 maps: Mapping[str, str]) -> tuple[dict, str | None, str]:
    if fields.kind == "tensor":
        placed = {required[0]: "batch"} if len(required) == 1 else {}
        return {**placed, **{a: k for a, k in maps.items() if a in required}}, None, "the sample"
    n = len(fields.names)
    if maps:
        placed = {a: k for a, k in maps.items() if a not in ("target", "mask")}
        rest = [k for k in fields.names if k not in placed.values()]
        return placed, (rest[-1] if len(rest) == 1 else None), "--map"
    if n == len(required):
        return dict(zip(required, fields.names, strict=True)), None, "by position"
    if n == len(required) + 1:
        return (dict(zip(required, fields.names, strict=False)), fields.names[-1],
                "by position, the last element the target")
    return {}, None, "by position"


def _by_name(fields: Fields, required: list[str], optional: list[str],
             maps: Mapping[str, str]) -> tuple[dict, str | None, str]:
    placed = {a: k for a, k in maps.items() if a not in ("target", "mask")}
    for arg in [*required, *optional]:
        if arg not in placed and arg in fields.names and arg not in placed.values():
            placed[arg] = arg
    rest = [k for k in fields.names if k not in placed.values()]
    named_target = [k for k in rest if k.lower() in TARGET_NAMES]
    others = [k for k in rest if k not in named_target and k.lower() not in MASK_NAMES]
    missing = [a for a in required if a not in placed]
    # one parameter left and one field left that is neither a target nor a mask: that one
    if len(missing) == 1 and len(others) == 1 and "target" not in maps:
        placed[missing[0]] = others.pop()
    how = "--map" if maps else "by name"
    target = named_target[0] if len(named_target) == 1 else (
        others[0] if len(others) == 1 and not named_target else None)
    return placed, target, how


def _unplaced(fields: Fields, required: list[str], optional: list[str], placed: dict,
              missing: list[str]) -> UserError:
    free = [k for k in fields.names if k not in placed.values()]
    pairs = list(zip(missing, free, strict=False))
    suggestion = " ".join(f"--map {a}={k}" for a, k in pairs) or "--map ARG=FIELD"
    args = ", ".join([*required, *(f"{a}=..." for a in optional)])
    return UserError(
        f"cannot tell which batch field feeds forward's {', '.join(repr(a) for a in missing)}",
        where="forward(" + args + ")", expected="batch fields named like forward's parameters,"
        " a tuple with one element per parameter (and the target last), or --map",
        found=f"dataset[0] is {shown_fields(fields)}",
        hint=f"say which field feeds each parameter, e.g. {suggestion}")
