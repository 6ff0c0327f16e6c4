"""A study's specification: what `--grid`, `--search`, `--seeds`, `--replicate` and
`--objective` say, as one frozen record, and its round trip through study.toml.

Parsing here checks each flag's own syntax (a SPEC's kind and bounds, `--seeds 0`); whether
its keys and values fit the recipe's config is `engine.study.checks`'s business.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs

from engine.core.errors import UserError, close_match
from engine.io.layering import parse_set

SEARCH_KINDS = ("loguniform", "uniform", "int", "choice")
DIRECTIONS = ("min", "max")
DATABASE_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "postgres://")   # --storage
NO_REPLICATE = "train.seed"   # with neither --seeds nor --replicate: the config's own seed


@attrs.frozen
class StudySpec:
    """Everything that defines a study; study.toml holds it and `--resume` compares it."""

    recipe: str
    recipes_file: str
    base: dict                       # the resolved config tables (NAME, --config, --set)
    grid: dict = attrs.field(factory=dict)         # {key: [values]} in the flags' order
    search: dict = attrs.field(factory=dict)       # {key: SPEC string}
    trials: int = 0
    sampler: str = "tpe"
    prune: bool = False
    replicate_key: str = NO_REPLICATE
    replicates: tuple = ()
    metric: str = "val_loss"
    direction: str = "min"
    storage: str = "journal"         # "journal" (optuna.journal here) or a database URL

    def configurations(self) -> list[dict] | None:
        """The grid's configurations in order (one when there is no grid); None for a search,
        whose configurations are its trials."""
        if self.search:
            return None
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in
                itertools.product(*(self.grid[k] for k in keys))]

    def n_configurations(self) -> int:
        """How many configurations the study has (the grid's size, or the trials)."""
        return self.trials if self.search else len(self.configurations())

    def to_toml_dict(self) -> dict:
        """study.toml's tables."""
        study = {"recipe": self.recipe, "recipes_file": self.recipes_file,
                 "objective": {"metric": self.metric, "direction": self.direction},
                 "replicates": {"key": self.replicate_key, "values": list(self.replicates)},
                 "storage": self.storage}
        if self.search:
            study["search"] = {"space": dict(self.search), "trials": self.trials,
                               "sampler": self.sampler, "prune": self.prune}
        else:
            study["prune"] = self.prune
        return {**study, "grid": {k: list(v) for k, v in self.grid.items()}, "base": self.base}


# --- flag syntax -----------------------------------------------------------------------------

def split_values(text: str) -> list[str]:
    """`1e-3,"a,b",[1, 2]` -> three values: commas inside quotes or brackets stay."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_value(key: str, raw: str, flag: str) -> Any:
    """One value read as `--set` reads it (TOML, or one bare word as a string)."""
    try:
        layer = parse_set(f"{key}={raw}")
    except UserError as exc:
        raise UserError(exc.what.replace("--set", flag.split()[0]), where=flag,
                        expected=exc.expected, found=exc.found, hint=exc.hint) from None
    node = layer.data
    for part in key.split("."):
        node = node[part]
    return node


def parse_key_values(flag_name: str, text: str) -> tuple[str, list]:
    """`--grid KEY=V1,V2,...` (or `--replicate`) as (key, [values])."""
    flag = f"{flag_name} {text}"
    if "=" not in text:
        raise UserError(f"{flag_name} needs KEY=V1,V2,...", where=flag,
                        expected="KEY=V1,V2,..., e.g. train.learning_rate=1e-3,3e-3", found=text)
    key, raw = text.split("=", 1)
    key = key.strip()
    raws = split_values(raw)
    if any(r == "" for r in raws):
        raise UserError(f"{flag_name} has an empty value", where=flag,
                        expected="values separated by commas", found=repr(raw))
    values = [parse_value(key, r, flag) for r in raws]
    if len({repr(v) for v in values}) != len(values):
        raise UserError(f"{flag_name} lists a value twice", where=flag,
                        expected="each value once", found=raw)
    return key, values


def parse_search(text: str) -> tuple[str, str, Any]:
    """`--search KEY=SPEC` as (key, SPEC, the Optuna distribution)."""
    flag = f"--search {text}"
    kinds = ", ".join(f"{k}:..." for k in SEARCH_KINDS)
    if "=" not in text:
        raise UserError("--search needs KEY=SPEC", where=flag,
                        expected="KEY=SPEC, e.g. train.learning_rate=loguniform:1e-4:1e-2",
                        found=text)
    key, spec = (part.strip() for part in text.split("=", 1))
    kind, _, rest = spec.partition(":")
    if kind not in SEARCH_KINDS:
        raise UserError(f"unknown search kind '{kind}'", where=flag, expected=f"one of {kinds}",
                        found=spec, hint=close_match(kind, SEARCH_KINDS))
    parse_value(key, "0", flag)   # the key's own syntax
    if kind == "choice":
        values = [parse_value(key, r, flag) for r in split_values(rest)] if rest else []
        if not values or any(not isinstance(v, (bool, int, float, str)) for v in values):
            raise UserError("choice needs plain values", where=flag,
                            expected="choice:V1,V2,... with numbers, booleans or strings",
                            found=spec)
        if len({repr(v) for v in values}) != len(values):
            raise UserError("choice lists a value twice", where=flag, expected="each value "
                            "once (a repeated value is drawn more often)", found=spec)
        return key, spec, ("choice", values)
    bounds = rest.split(":")
    numbers = [_number(b) for b in bounds] if len(bounds) == 2 else None
    if numbers is None or None in numbers:
        raise UserError(f"{kind} needs LOW:HIGH", where=flag,
                        expected=f"{kind}:LOW:HIGH with two numbers", found=spec)
    low, high = numbers
    if kind == "int" and not all(isinstance(n, int) for n in numbers):
        raise UserError("int needs integer bounds", where=flag, expected="int:LOW:HIGH, "
                        "e.g. int:16:256", found=spec)
    if not low < high:
        raise UserError("the search range is empty", where=flag, expected="LOW < HIGH",
                        found=f"LOW {low}, HIGH {high}")
    if kind == "loguniform" and low <= 0:
        raise UserError("loguniform needs positive bounds", where=flag,
                        expected="0 < LOW < HIGH", found=f"LOW {low}")
    return key, spec, (kind, numbers)


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_objective(text: str) -> tuple[str, str]:
    """`METRIC[:min|max]`; without a direction, min."""
    metric, colon, direction = text.partition(":")
    direction = direction or ("" if colon else "min")
    if not metric or direction not in DIRECTIONS:
        raise UserError("--objective needs METRIC[:min|max]", where=f"--objective {text}",
                        expected="a history column and min or max, e.g. val_ndcg_at_5:max",
                        found=text)
    return metric, direction


def distribution(spec: str) -> Any:
    """The Optuna distribution a (checked) SPEC string names."""
    # deferred: start-up time (imported when first used)
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    _, _, parsed = parse_search(f"x={spec}")
    kind, args = parsed
    if kind == "choice":
        return CategoricalDistribution(args)
    if kind == "int":
        return IntDistribution(args[0], args[1])
    return FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")
