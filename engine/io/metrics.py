"""metrics.json: the record of a run, rewritten atomically after every validation.

    {"recipe", "run_id", "status", "history": {column: [...]}, "best": {"epoch", "val_loss"},
     "error"?: {"epoch", "step", "message"}, ...entries recipes add (ranking_v2: "baselines")}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.core.errors import UserError
from engine.core.state import history_lists
from engine.io.files import atomic_write_bytes

# metrics.json keys the writer owns; any other top-level key (a recipe's `baselines`) is kept
OWN_KEYS = ("recipe", "run_id", "status", "history", "best", "error")


def _clean(value: Any) -> Any:
    # JSON has no NaN or inf: a non-finite figure is written as null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _column_clean(column: Any) -> Any:
    # the common case, a column of finite numbers, checked in C rather than value by value
    if isinstance(column, list):
        try:
            if all(map(math.isfinite, column)):
                return column
        except TypeError:
            pass
    return _clean(column)


def dumps(data: Mapping[str, Any]) -> str:
    """metrics.json's text: a top-level entry per line and a history column per line, each
    written by json's C encoder (indent= would take its Python one, whose cost grows with
    every epoch of history); non-finite figures as null."""
    lines = []
    for key, value in data.items():
        if key == "history" and isinstance(value, Mapping):
            columns = [f"    {json.dumps(str(k))}: {json.dumps(_column_clean(v))}"
                       for k, v in value.items()]
            body = "{\n" + ",\n".join(columns) + "\n  }" if columns else "{}"
        else:
            body = json.dumps(_clean(value))
        lines.append(f"  {json.dumps(str(key))}: {body}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def read_metrics(run_dir: str | Path) -> dict:
    """metrics.json of a run as a dict ({} when it does not exist yet). One that cannot be
    read as a JSON object is a UserError naming it: the engine writes it by rename, so a torn
    one is damage, and a resume or a study would otherwise lose the entries in it."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        found = exc.strerror or str(exc)
    except UnicodeDecodeError as exc:
        found = f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}, not UTF-8"
    except json.JSONDecodeError as exc:
        found = f"not JSON: {exc}"
    else:
        if isinstance(data, dict):
            return data
        found = f"a JSON {type(data).__name__}"
    raise UserError("the run's metrics.json cannot be read", where=str(path),
                    expected="a JSON object (the run's metrics, rewritten after every "
                             "validation)", found=found,
                    hint="the checkpoint holds the history: move metrics.json aside (keep any "
                         "entries of your own in it) and resume again")


def write_metrics(run_dir: str | Path, *, recipe: str, run_id: str, status: str,
                  history: Mapping[str, Any], best_epoch: int | None,
                  best_val_loss: float | None, error: Mapping | None = None,
                  extra: Mapping[str, Any] | None = None, files: Any = None) -> None:
    """Rewrite metrics.json atomically with the engine's entries and `extra` (the run's
    `metrics_extra`, kept in memory); without `extra`, the file's other entries are kept.
    With `files` (the run's FileWriter) the bytes are handed to it instead of written here."""
    if extra is None:
        extra = read_metrics(run_dir)
    data = {k: v for k, v in extra.items() if k not in OWN_KEYS}
    data = {"recipe": recipe, "run_id": run_id, "status": status,
            "history": history_lists(history),
            "best": {"epoch": best_epoch, "val_loss": best_val_loss}, **data}
    if error is not None:
        data["error"] = dict(error)
    path = Path(run_dir) / "metrics.json"
    text = dumps(data).encode("utf-8")
    if files is None:
        atomic_write_bytes(path, text)
    else:   # serialised now: the snapshot of this moment, written by the run's writer
        files.write(path, text)


def add_metrics_entry(target: Any, key: str, value: Any) -> None:
    """Add or replace a top-level entry of metrics.json (e.g. ranking_v2's `baselines`).

    `target` is the run (`state.run`, from a callback): the entry joins the run's
    `metrics_extra` and is written with metrics.json's next write (each validation, the end).
    A run directory's path instead rewrites the file now (for a run that has ended).

        @listens_to(Event.FIT_END)
        def add_test(event, state):
            add_metrics_entry(state.run, "test", {"ndcg_at_5": 0.93})
    """
    if key in OWN_KEYS:
        raise ValueError(f"metrics.json key {key!r} belongs to the engine")
    extra = getattr(target, "metrics_extra", None)
    if extra is not None:
        extra[key] = value
        return
    run_dir = target
    data = read_metrics(run_dir)
    data[key] = value
    atomic_write_bytes(Path(run_dir) / "metrics.json", dumps(data).encode("utf-8"))
