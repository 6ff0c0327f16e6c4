"""A run's directory: where it is and its id (metrics.json: `engine.io.metrics`).

    {output_dir}/models/{recipe}/runs/{run_id}/
        config.toml  metrics.json  model.pt  metrics.png  train.log  beautilog.ini
        checkpoints/last.pt  checkpoints/best.pt
"""

from __future__ import annotations

import datetime as _dt
import secrets
from pathlib import Path

from engine.core.errors import UserError


def new_run_id() -> str:
    """`YYYYMMDD-HHMMSS-` and four random hex digits."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def runs_root(output_dir: str | Path, recipe: str) -> Path:
    """`{output_dir}/models/{recipe}/runs`: where a recipe's run directories go."""
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
