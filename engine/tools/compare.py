"""`python -m engine compare RUN_DIR RUN_DIR... [--output FILE]`: what differs between runs.

From each run's config.toml and metrics.json: the config keys whose values differ (flattened,
`train.learning_rate`; a key a run's config.toml leaves out shows as `(default)`), the best
figures side by side (the validation columns at each run's best epoch), and a picture of the
validation curves overlaid, one panel per validation column, written to FILE (default
`artifacts/compare/{timestamp}.png`), never over an existing file.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from pathlib import Path
from typing import Any

from engine.core.config import flatten, toml_value
from engine.core.errors import UserError, raise_all
from engine.io.run_dir import why_unwritable
from engine.tools.runs import NotARun, load

MISSING = "(default)"


def differences(configs: list[dict]) -> dict[str, list[Any]]:
    """The flattened keys whose values are not the same in every config, in key order."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    table = {k: [f.get(k, MISSING) for f in flat] for k in keys}
    return {k: v for k, v in table.items() if any(x != v[0] for x in v[1:])}


def best_figures(metrics: dict) -> dict[str, Any]:
    """status, epochs run, the best epoch (from 1) and each validation column there."""
    history = metrics.get("history", {})
    best = (metrics.get("best") or {}).get("epoch")
    epochs = history.get("epoch", [])
    row: dict[str, Any] = {"status": metrics.get("status"),
                           "epochs run": (max(epochs) + 1) if epochs else 0,
                           "best epoch": None if best is None else best + 1}
    at = epochs.index(best) if best in epochs else None
    for column, values in history.items():
        if column.startswith("val_"):
            row[column] = values[at] if at is not None and at < len(values) else None
    return row


def _cell(value: Any, quote: bool) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value == MISSING or (isinstance(value, str) and not quote):
        return str(value)
    return toml_value(value)   # as config.toml and --set write it: "cpu", ["csv"]


def _columns(title: str, rows: dict[str, list[Any]], labels: list[str],
             quote: bool = False) -> str:
    cells = [[key, *(_cell(v, quote) for v in values)] for key, values in rows.items()]
    head = [title, *labels]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [head, *cells])


def plot(path: Path, runs: list[tuple[str, dict]]) -> None:
    """The runs' validation curves overlaid, one panel per validation column (epochs from 1);
    the file is created, never replaced."""
    import matplotlib  # deferred: start-up time
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: start-up time
    from matplotlib.ticker import MaxNLocator  # deferred: start-up time

    columns = list(dict.fromkeys(c for _, m in runs for c in m.get("history", {})
                                 if c.startswith("val_")))
    cols = min(3, max(1, len(columns)))
    rows = math.ceil(max(1, len(columns)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    axes = [ax for row in axes for ax in row]
    for ax, column in zip(axes, columns):
        for label, metrics in runs:
            history = metrics.get("history", {})
            if column in history:
                values = [v if isinstance(v, (int, float)) else math.nan
                          for v in history[column]]
                ax.plot([e + 1 for e in history.get("epoch", [])], values, marker="o", ms=3,
                        label=label)
        ax.set_title(column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:   # "x": never over a file, even one made since the check
        f.write(buffer.getvalue())


def _default_output() -> Path:
    folder = Path("artifacts") / "compare"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{stamp}.png", 2
    while path.exists():
        path, n = folder / f"{stamp}-{n}.png", n + 1
    return path


def _same_runs(run_dirs: list[str]) -> list[UserError]:
    # the same folder twice (however spelt) compares a run with itself: no differences to show
    seen: dict[Path, str] = {}
    errors = []
    for run_dir in run_dirs:
        real = Path(run_dir).resolve()
        if real in seen:
            spelt = run_dir if run_dir == seen[real] else f"{seen[real]} and {run_dir}"
            errors.append(UserError("compare got the same run twice", where="RUN_DIR arguments",
                                    expected="different run directories",
                                    found=f"the same run directory twice: {spelt}"))
        seen.setdefault(real, run_dir)
    return errors


def _output_error(target: Path, flag: str) -> UserError | None:
    """Why the picture cannot be written to `target`, checked before any run is read."""
    expected = "a new file (compare never overwrites one)"
    if target.is_dir():
        return UserError("the output is a folder", where=flag, expected=f"{expected}, not a "
                         "folder", found="an existing folder",
                         hint=f"name a file in it, e.g. {target / 'compare.png'}")
    if target.exists():
        return UserError("the output file exists", where=flag, expected=expected,
                         found="an existing file", hint="name another file")
    problem = why_unwritable(target.parent)
    if problem is not None:
        return UserError("the output file cannot be made", where=flag, expected="a path under "
                         "a folder this user can create files in", found=problem)
    return None


def _load_all(run_dirs: list[str]) -> tuple[list[tuple[Path, dict, dict]], list[UserError]]:
    runs, errors = [], []
    for run_dir in run_dirs:
        try:
            runs.append((Path(run_dir), *load(run_dir)))
        except NotARun as exc:
            errors.append(UserError("not a run directory", where=run_dir,
                                    expected="a run's folder with metrics.json and config.toml",
                                    found=str(exc)))
    return runs, errors


def cli(run_dirs: list[str], output: str | None) -> int:
    """Print what differs and the best figures; write the picture. UserErrors (exit 2) for
    fewer than two runs, the same run twice, a folder that is not a run (or whose metrics.json
    is torn or damaged), or an output path that exists or cannot be made."""
    errors = []
    if len(run_dirs) < 2:
        errors.append(UserError("compare needs two runs or more", where="RUN_DIR arguments",
                                expected="two run directories or more",
                                found=f"{len(run_dirs)}"))
    errors += _same_runs(run_dirs)
    runs, problems = _load_all(run_dirs)
    errors += problems
    target = Path(output) if output else _default_output()
    flag = f"--output {output}" if output else f"the default output {target}"
    problem = _output_error(target, flag)
    raise_all(errors + ([problem] if problem else []))
    labels = [str(m.get("run_id") or p.name) for p, m, _ in runs]
    for i, (path, metrics, _) in enumerate(runs):
        print(f"{labels[i]}  {metrics.get('recipe', '?')}  {path}")
    diff = differences([c for _, _, c in runs])
    print()
    print(_columns("config keys that differ", diff, labels, quote=True) if diff
          else "config: the same in every run")
    best = [best_figures(m) for _, m, _ in runs]
    keys = list(dict.fromkeys(k for b in best for k in b))
    print()
    print(_columns("best", {k: [b.get(k) for b in best] for k in keys}, labels))
    try:
        plot(target, [(label, m) for label, (_, m, _) in zip(labels, runs)])
    except FileExistsError:
        raise UserError("the output file exists", where=str(target),
                        expected="a new file (compare never overwrites one)",
                        found="a file made while comparing") from None
    except OSError as exc:   # the folder changed since the check, or a full disk
        raise UserError("the output file cannot be written", where=str(target),
                        expected="a new file this user can write",
                        found=exc.strerror or str(exc)) from None
    print(f"\npicture: {target}")
    return 0
