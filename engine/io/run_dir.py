"""A run's directory: where it is and its id (metrics.json: `engine.io.metrics`).

    {output_dir}/models/{recipe}/runs/{run_id}/
        config.toml  metrics.json  model.pt  metrics.png  train.log  beautilog.ini
        checkpoints/last.pt  checkpoints/best.pt
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from pathlib import Path

from engine.core.errors import UserError


def new_run_id() -> str:
    """`YYYYMMDD-HHMMSS-` and four random hex digits."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def runs_root(output_dir: str | Path, recipe: str) -> Path:
    """`{output_dir}/models/{recipe}/runs`: where a recipe's run directories go."""
    return Path(output_dir) / "models" / recipe / "runs"


def unwritable(output_dir: str | Path, found: str) -> UserError:
    """The error of an output directory that cannot be written (one wording everywhere)."""
    return UserError("the output directory cannot be written",
                     where=f'train.output_dir = "{output_dir}"',
                     expected="a folder this user can create files in", found=found)


def check_writable(root: str | Path, output_dir: str | Path) -> None:
    """Fail before anything runs when `root` (a folder under `output_dir`) cannot be made or
    written; create nothing (each command makes its own folder once its checks passed)."""
    problem = why_unwritable(root)
    if problem is not None:
        raise unwritable(output_dir, problem)


def why_unwritable(path: str | Path) -> str | None:
    """Why `path` (made later, with its missing folders) could not be made: its nearest
    existing ancestor is a file, or not writable; None when it could."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


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
        raise unwritable(output_dir, f"{exc.strerror or exc} ({exc.filename or root})") from None
    raise UserError("no free run id", where=str(root), expected="a new run id",
                    found="100 collisions")
