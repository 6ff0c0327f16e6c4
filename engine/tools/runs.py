"""`python -m engine runs [NAME] [--output-dir DIR] [--json]`: the past runs, newest first.

Every run under `{output_dir}/models/*/runs/*` and every study's run under
`{output_dir}/studies/*/*/runs/*` (its metrics.json `study` block names the study), read from
metrics.json and config.toml alone. A folder that is not a run, or whose metrics.json is torn
or damaged (a field of the wrong shape, see `damage`), is one line on stderr; the other runs are
still listed.

- `started`: the time in the run's id (`YYYYMMDD-HHMMSS-xxxx`, the local clock when the run
  was made), in UTC; for a folder whose name is not a run id, config.toml's modification time.
- `duration_s`: metrics.json's modification time (its last write: the end of the run) minus
  `started`; for a run still `running`, now minus `started`. A resumed run counts the pause.
- `epochs`: the epochs run up to the last validation (the history's last epoch + 1).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from engine.core.errors import UserError
from engine.io.layering import read_toml
from engine.tools.metrics_shape import damage

PATTERNS = ("models/*/runs/*", "studies/*/*/runs/*")


@attrs.frozen
class RunInfo:
    """One past run, as `runs --json` prints it."""

    run_id: str
    recipe: str
    status: str
    epochs: int
    best_epoch: int | None
    best_val_loss: float | None
    started: str | None          # ISO 8601, UTC
    duration_s: float | None
    study_id: str | None
    run_dir: str


class NotARun(Exception):
    """A folder where a run was expected, and why it is not one (one line)."""


def load(run_dir: str | Path) -> tuple[dict, dict]:
    """A run's metrics.json and config.toml as dicts; NotARun saying what is wrong."""
    path = Path(run_dir)
    if not path.is_dir():
        raise NotARun("no such folder" if not path.exists() else "a file, not a run's folder")
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotARun("not a run (no metrics.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotARun(f"metrics.json is torn or unreadable ({exc})") from None
    problem = damage(metrics)
    if problem is not None:
        raise NotARun(f"metrics.json is damaged ({problem})")
    try:
        config = read_toml(path / "config.toml", "config.toml")
    except UserError as exc:
        raise NotARun(f"{exc.what}: {exc.found}") from None
    return metrics, config


def started_at(run_dir: Path) -> dt.datetime | None:
    """When the run started (UTC): the time in its id, else config.toml's modification time."""
    try:
        local = dt.datetime.strptime(run_dir.name[:15], "%Y%m%d-%H%M%S")
        return local.astimezone(dt.timezone.utc)   # a naive time is read as local time
    except ValueError:
        pass
    try:
        return dt.datetime.fromtimestamp((run_dir / "config.toml").stat().st_mtime,
                                         dt.timezone.utc)
    except OSError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_info(run_dir: Path) -> RunInfo:
    """One run's row for `runs` from its metrics.json and config.toml; NotARun for a folder
    that is not one (or whose metrics.json is torn or damaged)."""
    metrics, _ = load(run_dir)   # checked by `damage`: every field below has its shape
    history, best = metrics["history"], metrics.get("best", {})
    epochs = history.get("epoch", [])
    status = metrics.get("status", "unknown")
    start = started_at(run_dir)
    duration = None
    if start is not None:
        try:
            end = (time.time() if status == "running"
                   else (run_dir / "metrics.json").stat().st_mtime)
            duration = round(max(0.0, end - start.timestamp()), 1)
        except OSError:   # removed since it was read: the row stands without a duration
            pass
    study_id = metrics.get("study", {}).get("study_id")
    return RunInfo(
        run_id=metrics.get("run_id", run_dir.name), recipe=metrics.get("recipe", "?"),
        status=status, epochs=max(epochs) + 1 if epochs else 0,
        best_epoch=best.get("epoch"), best_val_loss=_number(best.get("val_loss")),
        started=start.isoformat(timespec="seconds").replace("+00:00", "Z") if start else None,
        duration_s=duration, study_id=study_id, run_dir=str(run_dir))


def listing(output_dir: str | Path, name: str | None = None) -> tuple[list[RunInfo], list[str]]:
    """The runs under `output_dir` (of recipe `name` if given), newest first, and one line per
    folder that could not be read."""
    root = Path(output_dir)
    found, problems = [], []
    folders = sorted({p for pattern in PATTERNS for p in root.glob(pattern) if p.is_dir()})
    for folder in folders:
        try:
            info = run_info(folder)
        except NotARun as exc:
            problems.append(f"skipped {folder}: {exc}")
            continue
        if name is None or info.recipe == name:
            found.append(info)
    found.sort(key=lambda r: (r.started or "", r.run_id), reverse=True)
    return found, problems


# --- the table -------------------------------------------------------------------------------

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 1)] + "~"


def table(runs: list[RunInfo], width: int) -> str:
    """The runs as aligned columns fitting `width` characters where it can: first the study
    column is cut, then STARTED goes (the run id holds the local start time), then the gaps
    narrow, then the recipe column is cut. Epochs count from 1 here, as in the log."""
    header = ["RUN_ID", "RECIPE", "STATUS", "EPOCHS", "BEST", "VAL_LOSS", "STARTED (UTC)",
              "DURATION", "STUDY"]
    rows = [[r.run_id, r.recipe, r.status, str(r.epochs),
             "-" if r.best_epoch is None else str(r.best_epoch + 1),
             "-" if r.best_val_loss is None else f"{r.best_val_loss:.4g}",
             (r.started or "-").replace("T", " ").removesuffix("Z")[:16],
             _duration(r.duration_s), r.study_id or "-"] for r in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    gap = 2

    def excess() -> int:
        return sum(widths) + gap * (len(widths) - 1) - width

    if excess() > 0:   # the study column first
        widths[-1] = max(5, widths[-1] - excess())
    if excess() > 0:
        for row in [header, *rows]:
            del row[6]
        del widths[6]
    if excess() > 0:
        gap = 1
    if excess() > 0:
        widths[1] = max(8, widths[1] - excess())
    return "\n".join((" " * gap).join(_cut(cell, w).ljust(w)
                                      for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def cli(name: str | None, output_dir: str | None, as_json: bool) -> int:
    """Print the runs (a table, or JSON); skipped folders on stderr. Exit 0 (a UserError for an
    output directory that is a file)."""
    where = f"--output-dir {output_dir}" if output_dir else "the default output directory"
    output_dir = output_dir or "artifacts"
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        # a folder that does not exist yet holds no runs; a file in its place is a mistake
        raise UserError("the output directory is a file", where=where,
                        expected="the folder that holds models/ and studies/",
                        found=f"{output_dir} is a file, not a folder")
    runs, problems = listing(output_dir, name)
    for line in problems:
        print(line, file=sys.stderr)
    if as_json:
        print(json.dumps([attrs.asdict(r) for r in runs], indent=2))
        return 0
    if not runs:
        what = f"runs of {name}" if name else "runs"
        print(f"no {what} under {output_dir}", file=sys.stderr)
        return 0
    print(table(runs, shutil.get_terminal_size((120, 24)).columns))
    return 0
