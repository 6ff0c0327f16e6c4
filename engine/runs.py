"""A run's directory: where it is, its id, metrics.json and the loss plot.

    {output_dir}/models/{recipe}/runs/{run_id}/
        config.toml  metrics.json  model.pt  metrics.png  train.log  beautilog.ini
        checkpoints/last.pt  checkpoints/best.pt
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.files import atomic_write_json

# metrics.json keys the writer owns; any other top-level key (a recipe's `baselines`) is kept
OWN_KEYS = ("recipe", "run_id", "status", "history", "best", "error")


def new_run_id() -> str:
    """`YYYYMMDD-HHMMSS-` and four random hex digits."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def runs_root(output_dir: str | Path, recipe: str) -> Path:
    return Path(output_dir) / "models" / recipe / "runs"


def make_run_dir(output_dir: str | Path, recipe: str) -> tuple[Path, str]:
    """Create a new, empty run directory (never an existing one) and return it with its id."""
    root = runs_root(output_dir, recipe)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run_id = new_run_id()
            run_dir = root / run_id
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            (run_dir / "checkpoints").mkdir()
            return run_dir, run_id
    except OSError as exc:
        raise UserError("the output directory cannot be written", where=f"train.output_dir = "
                        f"\"{output_dir}\"", expected="a folder this user can create files in",
                        found=f"{exc.strerror or exc} ({exc.filename or root})") from None
    raise UserError("no free run id", where=str(root), expected="a new run id",
                    found="100 collisions")


def _clean(value: Any) -> Any:
    # JSON has no NaN or inf: a non-finite figure is written as null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_metrics(run_dir: str | Path) -> dict:
    """metrics.json of a run as a dict ({} when it does not exist yet)."""
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def write_metrics(run_dir: str | Path, *, recipe: str, run_id: str, status: str,
                  history: Mapping[str, Any], best_epoch: int | None,
                  best_val_loss: float | None, error: Mapping | None = None) -> None:
    """Rewrite metrics.json atomically, keeping the top-level entries recipes added."""
    data = {k: v for k, v in read_metrics(run_dir).items() if k not in OWN_KEYS}
    data = {"recipe": recipe, "run_id": run_id, "status": status,
            "history": {k: list(v) for k, v in history.items()},
            "best": {"epoch": best_epoch, "val_loss": best_val_loss}, **data}
    if error is not None:
        data["error"] = dict(error)
    atomic_write_json(Path(run_dir) / "metrics.json", _clean(data))


def add_metrics_entry(run_dir: str | Path, key: str, value: Any) -> None:
    """Add or replace a top-level entry of metrics.json (e.g. ranking_v2's `baselines`).

    Callbacks use it; the metrics writer keeps such entries when it rewrites the file.
    """
    if key in OWN_KEYS:
        raise ValueError(f"metrics.json key {key!r} belongs to the engine")
    data = read_metrics(run_dir)
    data[key] = value
    atomic_write_json(Path(run_dir) / "metrics.json", _clean(data))
