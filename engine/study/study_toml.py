"""study.toml read back: the specification and study id, or one block per damaged key.

`sweep` writes the file and nothing else does, but it is plain text in a folder users keep
for months: an edit or a torn copy must stop `report`, `--resume` and `--worker` with the key
and what it holds, not with a traceback deep in a worker, and never rank runs by a direction
the engine does not know.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.core.errors import UserError, raise_all
from engine.io.layering import read_toml
from engine.study import spec as specs
from engine.study.spec import StudySpec

SAMPLERS = ("tpe", "random")
STORAGE_PREFIXES = ("sqlite:", *specs.DATABASE_PREFIXES)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_MISSING = object()


def load(study_dir: Path) -> tuple[StudySpec, str]:
    """The specification and study id in STUDY_DIR/study.toml (UserErrors when damaged)."""
    path = Path(study_dir) / "study.toml"
    data = read_toml(path, "study.toml")
    if not data:
        raise UserError("study.toml is empty", where=str(path),
                        expected="the specification sweep wrote (study_id, recipe, [base], ...)",
                        found="no keys", hint="restore it from a copy")
    errors: list[UserError] = []

    def want(key: str, ok: Any, expected: str, default: Any = _MISSING) -> Any:
        value = _get(data, key)
        if value is _MISSING and default is not _MISSING:
            return default
        if value is _MISSING or not ok(value):
            errors.append(UserError("study.toml is damaged", where=f"{path} {key}",
                                    expected=expected, found=_found(value),
                                    hint="sweep wrote it: restore it from a copy"))
            return None
        return value

    study_id = want("study_id", _text, "the study's id (its folder's name), a string")
    recipe = want("recipe", _text, "the recipe's name, a string")
    recipes_file = want("recipes_file", _text, "the path of the recipes.toml, a string")
    base = want("base", _table, "the resolved config, a table [base]")
    grid = want("grid", lambda v: _table(v) and all(
        isinstance(x, list) and x for x in v.values()), "a table of non-empty lists", {})
    search = want("search", _table, "a table [search]", {})
    space = want("search.space", lambda v: _table(v) and all(isinstance(x, str) for x in
                                                              v.values()),
                 "a table of SPEC strings, e.g. 'loguniform:1e-4:1e-2'", {}) if search else {}
    errors += _space_errors(path, space or {})
    trials = want("search.trials", lambda v: type(v) is int and v >= 1,
                  "a whole number >= 1", 0) if search else 0
    sampler = want("search.sampler", lambda v: v in SAMPLERS, " or ".join(SAMPLERS),
                   "tpe") if search else "tpe"
    prune = want("search.prune" if search else "prune", lambda v: type(v) is bool,
                 "true or false", False)
    rep_key = want("replicates.key", lambda v: _text(v) and _NAME.match(v),
                   "a config key, e.g. train.seed")
    rep_values = want("replicates.values", lambda v: isinstance(v, list) and v,
                      "a non-empty list of values")
    metric = want("objective.metric", lambda v: _text(v) and _NAME.match(v),
                  "a history column's name, e.g. val_loss")
    direction = want("objective.direction", lambda v: v in specs.DIRECTIONS,
                     " or ".join(specs.DIRECTIONS))
    storage = want("storage", lambda v: v == "journal" or (
        isinstance(v, str) and v.startswith(STORAGE_PREFIXES)),
        "journal, or the database URL the study was made with")
    raise_all(errors)
    spec = StudySpec(recipe=recipe, recipes_file=recipes_file, base=base,
                     grid=dict(grid), search=dict(space),
                     trials=trials, sampler=sampler, prune=prune, replicate_key=rep_key,
                     replicates=tuple(rep_values), metric=metric, direction=direction,
                     storage=storage)
    return spec, study_id


def _space_errors(path: Path, space: dict) -> list[UserError]:
    """Each search SPEC as `--search` would parse it."""
    errors = []
    for key, spec in space.items():
        try:
            specs.parse_search(f"{key}={spec}")
        except UserError as exc:
            errors.append(UserError("study.toml is damaged", where=f"{path} search.space.{key}",
                                    expected=exc.expected, found=repr(spec)))
    return errors


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _table(value: Any) -> bool:
    return isinstance(value, dict)


def _get(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _found(value: Any) -> str:
    if value is _MISSING:
        return "no such key"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
