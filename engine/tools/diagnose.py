"""`python -m engine diagnose RUN_DIR`: why a run is (not) converging, read from its files.

metrics.json gives the history (one entry per validation: `train_loss`, `val_loss`,
`learning_rate`, `grad_norm`, `clipped_fraction`, `nonfinite_steps`), the status and, for a
failed run, the error; config.toml gives the `[train]` settings. `findings(metrics, train)` is
the pure logic over those dicts; `diagnose(run_dir)` loads them; `cli` prints the result.

Findings come most serious first (error, warning, info). Epochs in the evidence count from 1, as
the progress bar and the log do (the history itself counts from 0). A non-finite figure is null
in metrics.json and None here.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from engine.core.errors import UserError, describe_value
from engine.io.layering import read_toml
from engine.tools.diagnose_rules import RULES, not_learning, plateau
from engine.tools.diagnose_view import SEVERITIES, Finding, View, best_of, g, view_of
from engine.tools.metrics_shape import damage

__all__ = ["SEVERITIES", "Finding", "cli", "diagnose", "findings", "load_run", "render"]


# --- files -----------------------------------------------------------------------------------

def _shape_error(path: Path, found: str, what: str = "not a run directory") -> UserError:
    # a folder without metrics.json is likely the wrong folder; a torn or damaged file is not
    hint = ("pass a folder under {output_dir}/models/{recipe}/runs/"
            if what == "not a run directory" else None)
    return UserError(what, where=str(path),
                     expected='metrics.json of a run: {"status": ..., "history": {column: '
                     "[values]}, ...}", found=found, hint=hint)


def load_run(run_dir: str | Path) -> tuple[dict, dict]:
    """metrics.json and config.toml's `[train]` table of a run, checked for shape."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError("not a run directory", where=str(path),
                        expected="a run's folder holding metrics.json",
                        found="no such folder" if not path.exists() else "a file")
    metrics_path = path / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _shape_error(path, "no metrics.json in it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _shape_error(metrics_path, f"unreadable JSON ({exc})",
                           "metrics.json is torn or unreadable") from None
    problem = damage(metrics)   # the shape `runs` and `compare` check too
    if problem is not None:
        raise _shape_error(metrics_path, problem, "metrics.json is damaged")
    return metrics, _with_defaults(_train_table(path / "config.toml"))


def _train_table(path: Path) -> dict:
    # no config.toml (a hand-made or copied run): every setting at its default
    if not path.exists():
        return {}
    table = read_toml(path, "run config").get("train", {})
    if not isinstance(table, Mapping):
        raise UserError("the run config's [train] is not a table", where=str(path),
                        expected="a [train] table of TrainConfig's settings",
                        found=f"train = {describe_value(table)}")
    return dict(table)


def _with_defaults(train: Mapping) -> dict:
    # config.toml leaves out None values and may predate a field: fill from TrainConfig
    from engine.core.config import TrainConfig
    defaults = {f.name: f.default for f in attrs.fields(TrainConfig)}
    return {**defaults, **train}


def findings(metrics: Mapping, train: Mapping | None = None) -> list[Finding]:
    """The findings for a loaded metrics.json and `[train]` table, most serious first.

    Works on histories of any length (0 and 1 included) with None for non-finite figures.
    """
    train = dict(train or {})
    v = view_of(metrics)
    out: list[Finding] = []
    for rule in RULES:
        if rule is not_learning and any(f.code == "diverging" for f in out):
            continue  # a loss that blew up is not a flat one
        if rule is plateau and any(f.code == "overfitting" for f in out):
            continue  # overfitting explains why val_loss stopped improving
        out += rule(v, train)
    if out:
        return sorted(out, key=lambda f: SEVERITIES.index(f.severity))
    if v.n == 0:
        return [Finding("no-history", "info", f"no validation recorded yet (status {v.status})",
                        "diagnose again after the first validation")]
    return [Finding("healthy", "info", _summary(v),
                    "nothing to fix" if v.n > 1 else
                    "one validation is too short to judge trends; diagnose a longer run")]


def _summary(v: View) -> str:
    parts = [f"{v.n} validation(s), status {v.status}"]
    vals, best = v.finite("val_loss"), best_of(v)
    if vals and best:
        parts.append(f"val_loss {g(vals[0][1])} (epoch {v.epochs[vals[0][0]]}) -> best "
                     f"{g(best[1])} (epoch {v.epochs[best[0]]})")
    tl = v.finite("train_loss")
    if tl:
        parts.append(f"train_loss {g(tl[0][1])} -> {g(tl[-1][1])}")
    return "; ".join(parts)


def diagnose(run_dir: str | Path) -> list[Finding]:
    """The findings for the run in `run_dir`, most serious first (UserError if not a run)."""
    metrics, train = load_run(run_dir)
    return findings(metrics, train)


def render(found: Sequence[Finding]) -> str:
    """Human text: one block per finding."""
    return "\n\n".join(f"{f.code} ({f.severity})\n  evidence: {f.evidence}\n  advice: {f.advice}"
                       for f in found)


def cli(run_dir: str, as_json: bool = False) -> int:
    """`engine diagnose RUN_DIR [--json]`: print the findings; 0 (UserError if not a run)."""
    found = diagnose(run_dir)
    if as_json:
        print(json.dumps([attrs.asdict(f) for f in found], indent=2))
    else:
        print(f"run: {run_dir}\n")
        print(render(found))
    return 0
