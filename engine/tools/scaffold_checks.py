"""Checks of what `engine new --model` is given that its inference cannot make safe: --set keys
the recipe would drop, a learning rate that is no number, a model size the data does not decide.
Each refuses with a UserError before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.core.config import toml_value
from engine.core.errors import UserError, close_match, raise_all
from engine.io.layering import parse_set
from engine.tools import sizes, wire


def set_keys(by_table: dict, model_cls: type, dataset_cls: type) -> None:
    """--set model.KEY and data.KEY must name a constructor parameter new passes on (or
    data.val_fraction, in (0, 1), when the dataset has no split parameter): any other key
    would be dropped from the recipe without a word."""
    data_params = {p.name for p in wire.constructor_params(dataset_cls)}
    split = next((n for n in ("split", "train") if n in data_params), None)
    allowed = {"model": {p.name for p in wire.constructor_params(model_cls)},
               "data": data_params - {split} | (set() if split else {"val_fraction"})}
    classes = {"model": model_cls, "data": dataset_cls}
    errors = []
    for table, names in allowed.items():
        cls = classes[table]
        for key, value in by_table[table].items():
            if key not in names:
                errors.append(UserError(
                    f"--set {table}.{key}: {cls.__name__} takes no parameter '{key}'",
                    where=f"--set {table}.{key}={toml_value(value)}",
                    expected="one of " + (", ".join(sorted(names)) or "(none)"),
                    found=key, hint=close_match(key, names) or (
                        f"new chooses '{split}' itself" if key == split else None)))
    fraction = by_table["data"].get("val_fraction")
    if "val_fraction" in allowed["data"] and fraction is not None and not (
            isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
            and 0 < fraction < 1):
        errors.append(UserError("data.val_fraction must be a number between 0 and 1",
                                where=f"--set data.val_fraction={toml_value(fraction)}",
                                expected="0 < val_fraction < 1 (the share held out)",
                                found=toml_value(fraction), hint="e.g. 0.2"))
    raise_all(errors)


def sizes_matter(cls: type, values: dict, notes: dict, fields: wire.Fields,
                 accepts: Any) -> None:
    """A size taken because forward ran with it must be one forward runs with alone: a model
    that runs just as well with another value ignores it (or uses it as a width), so the data
    says nothing about it and a guess would be a silent wrong value."""
    unsure = [name for name, note in notes.items()
              if note.endswith(sizes.FORWARD_TAKES) and accepts({**values,
                                                                  name: values[name] + 1})]
    params = {p.name: p for p in wire.constructor_params(cls)}
    raise_all([sizes.unknown_size(cls, params[name], fields) for name in unsure])


def given_rate(sets: Sequence[str]) -> None:
    """--set train.learning_rate is tried as given: it must be a positive number."""
    for flag in sets:
        if flag.split("=", 1)[0].strip() != "train.learning_rate":
            continue
        value = parse_set(flag).data["train"]["learning_rate"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value < float("inf")):
            raise UserError("train.learning_rate must be a positive number",
                            where=f"--set {flag}", expected="a number > 0, e.g. 1e-3",
                            found=toml_value(value))
