"""Whether a parsed metrics.json has the shape the engine writes: `damage(metrics)` names the
first field that does not (one phrase), or None.

One check for `runs`, `compare` and `diagnose`, so that the three agree on what a damaged file
is and every field they read can be used as it is. A key the engine always writes may be
absent (an older or hand-made file: each reader has a default for it); one that is present
must have the shape the engine writes.
"""

from __future__ import annotations

import json
from typing import Any


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else "boolean"
    return {list: "list", str: "string"}.get(type(value), "number")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _figure(value: Any) -> bool:
    # a non-finite figure is written as null; NaN and Infinity are read as floats
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _history_damage(history: Any) -> str | None:
    if history is None:
        return 'no "history" object'
    if not isinstance(history, dict):
        return f'"history" is {_shown(history)}, not an object'
    for key, column in history.items():
        if not isinstance(column, list):
            return f'history["{key}"] is {_shown(column)}, not a list'
        bad = next((x for x in column if not _figure(x)), None)
        if bad is not None:
            return f'history["{key}"] holds {_shown(bad)}, a value that is not a number'
    if len({len(c) for c in history.values()}) > 1:
        return "history columns of different lengths"
    if "epoch" not in history and any(history.values()):   # every reader labels by it
        return 'history has validations but no "epoch" column'
    bad = next((e for e in history.get("epoch", []) if not _count(e)), None)
    if bad is not None:
        return f'history["epoch"] holds {_shown(bad)}, not a whole number >= 0'
    return None


def _best_damage(best: Any, epochs: list) -> str | None:
    if not isinstance(best, dict):
        return f'"best" is {_shown(best)}, not an object'
    epoch, val_loss = best.get("epoch"), best.get("val_loss")
    if epoch is not None and not _count(epoch):
        return f'best["epoch"] is {_shown(epoch)}, not a whole number >= 0 or null'
    if epoch is not None and epoch not in epochs:
        return f'best["epoch"] is {epoch}, an epoch that history["epoch"] does not hold'
    if not _figure(val_loss):
        return f'best["val_loss"] is {_shown(val_loss)}, not a number or null'
    return None


def _block_damage(key: str, block: Any, fields: dict[str, tuple[str, Any]]) -> str | None:
    # an optional object whose listed fields, when present, each pass their test
    if not isinstance(block, dict):
        return f'"{key}" is {_shown(block)}, not an object'
    for name, (expected, ok) in fields.items():
        if name in block and not ok(block[name]):
            return f'{key}["{name}"] is {_shown(block[name])}, not {expected}'
    return None


def damage(metrics: Any) -> str | None:
    """What makes a parsed metrics.json unusable as a run's record, naming the field (one
    phrase), or None when every field `runs`, `compare` and `diagnose` read has its shape."""
    if not isinstance(metrics, dict):
        return f"a JSON {_kind(metrics)}, not an object"
    problem = _history_damage(metrics.get("history"))
    if problem is not None:
        return problem
    for key in ("recipe", "run_id", "status"):
        value = metrics.get(key, "-")
        if not isinstance(value, str) or not value:
            return f'"{key}" is {_shown(value)}, not a non-empty string'
    if "best" in metrics:
        problem = _best_damage(metrics["best"], metrics["history"].get("epoch", []))
        if problem is not None:
            return problem
    optional_id = ("a string or null", lambda v: v is None or isinstance(v, str))
    count_or_null = ("a whole number >= 0 or null", lambda v: v is None or _count(v))
    blocks = {"study": {"study_id": optional_id},
              "error": {"epoch": count_or_null, "step": count_or_null,
                        "message": ("a string", lambda v: isinstance(v, str))}}
    for key, fields in blocks.items():
        if key in metrics:
            problem = _block_damage(key, metrics[key], fields)
            if problem is not None:
                return problem
    return None
