"""The model's constructor values for `engine new --model`: given, a dataset attribute of the
same name, or read from the shapes of the batch fields that feed the model."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from engine.core.errors import UserError, raise_all
from engine.core.preflight import describe
from engine.tools.wire import Fields, Param, Wiring, constructor_params, is_toml_value, shown_fields

# --- the model's sizes -----------------------------------------------------------------------

_STEM = re.compile(r"^(num_|n_|in_|d_)?(?P<stem>.+?)(_dim|_size|_features|_channels|_len)?$")
_INPUT_NAMES = ("input_dim", "in_dim", "in_features", "input_size", "n_features",
                "num_features", "d_in", "dim", "in_channels", "input_channels", "n_inputs")

# the note of a size found only because forward ran with it (scaffold_checks rechecks those)
FORWARD_TAKES = "the one size of the inputs forward takes"


def _stem(name: str) -> str:
    match = _STEM.match(name.lower())
    stem = match.group("stem") if match else name.lower()
    return stem[:-1] if stem.endswith("s") and len(stem) > 3 else stem


def size_from_batch(param: str, fields: Fields, wiring: Wiring) -> tuple[Any, str] | None:
    """A size read from the shape of the input field its name points to (or the only input)."""
    inputs = [f for _, f in wiring.inputs]
    stem = _stem(param)
    # the field, or the forward parameter it feeds, named like the size (image_dim: image)
    matches = [f for a, f in wiring.inputs if stem in (_stem(f), _stem(a))
               or f.lower().startswith(stem)]
    if not matches and len(inputs) == 1 and param.lower() in _INPUT_NAMES:
        matches = inputs
    if len(matches) != 1 or not isinstance(fields.get(matches[0]), torch.Tensor):
        return None
    value = fields.get(matches[0])
    if value.dim() == 0:
        return None
    channels = param.lower().endswith("channels")
    size = int(value.shape[0] if channels else value.shape[-1])
    which = "first (channel)" if channels else "last"
    return size, f"the {which} dimension of {fields.shown(matches[0])} ({describe(value)})"


def model_values(cls: type, fields: Fields, wiring: Wiring, dataset: Any,
                 sets: Mapping[str, Any], accepts: Callable[[dict], bool] | None = None
                 ) -> tuple[dict, dict, tuple, tuple]:
    """(values, notes, required-and-set, kept) for the model's constructor: --set, then a
    dataset attribute of the same name, then the batch's shapes (the field it names, else the
    one size of the inputs that `accepts` finds forward to take); else an error."""
    params = constructor_params(cls)
    values, notes, required, kept, unknown = {}, {}, [], [], []
    for p in params:
        if p.name in sets:
            values[p.name], notes[p.name] = sets[p.name], "given with --set"
            required += [p.name] if p.required else []
        elif not p.required:
            if is_toml_value(p.default):
                values[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
            else:
                kept.append(p.name)
        elif is_toml_value(getattr(dataset, p.name, None)):
            values[p.name] = getattr(dataset, p.name)
            notes[p.name] = f"{type(dataset).__name__}.{p.name} of the training set"
        elif (found := size_from_batch(p.name, fields, wiring)) is not None:
            values[p.name], notes[p.name] = found
        else:
            unknown.append(p)
    if unknown and accepts is not None:
        found_sizes = sizes_forward_takes(unknown, values, fields, wiring, accepts)
        for p in [p for p in unknown if p.name in found_sizes]:
            values[p.name], notes[p.name] = found_sizes[p.name]
        unknown = [p for p in unknown if p.name not in found_sizes]
    raise_all([unknown_size(cls, p, fields) for p in unknown])
    order = [p.name for p in params]
    return dict(sorted(values.items(), key=lambda kv: order.index(kv[0]))), notes, \
        tuple(required), tuple(kept)


MAX_TRIALS = 64


def sizes_forward_takes(unknown: list[Param], values: dict, fields: Fields, wiring: Wiring,
                        accepts: Callable[[dict], bool]) -> dict[str, tuple[int, str]]:
    """The sizes that only one choice among the inputs' dimensions lets forward run with: each
    combination of the inputs' last (and channel) dimensions is tried (at most MAX_TRIALS)."""
    dims: dict[int, str] = {}
    for _, name in wiring.inputs:
        value = fields.get(name)
        if isinstance(value, torch.Tensor) and value.dim():
            dims.setdefault(int(value.shape[-1]), f"the last dimension of {fields.shown(name)}")
            dims.setdefault(int(value.shape[0]), f"the first dimension of {fields.shown(name)}")
    if not dims or len(dims) ** len(unknown) > MAX_TRIALS:
        return {}
    taken = [combo for combo in itertools.product(dims, repeat=len(unknown))
             if accepts({**values, **{p.name: v for p, v in zip(unknown, combo)}})]
    out = {}
    for i, p in enumerate(unknown):
        choices = {combo[i] for combo in taken}
        if len(choices) == 1:
            (size,) = choices
            out[p.name] = (size, f"{dims[size]}, {FORWARD_TAKES}")
    return out


def unknown_size(cls: type, p: Param, fields: Fields) -> UserError:
    """The size `p` that neither the data nor a forward pass decides: --set it."""
    return UserError(
        f"cannot read {cls.__name__}'s '{p.name}' from the data", where=f"{cls.__module__}."
        f"{cls.__name__}.__init__({p.name}: {p.annotation})", expected="a default, a dataset "
        f"attribute '{p.name}', or a batch field whose name it names", found="dataset[0] is "
        + shown_fields(fields), hint=f"--set model.{p.name}=VALUE")
