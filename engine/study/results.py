"""results.json: the study's runs gathered by configuration, their statistics, the ranking.

    {"study_id", "recipe", "objective": {"metric", "direction"}, "replicates": {"key", ...},
     "configurations": [{"configuration", "params", "runs": [{"run_id", "replicate", "status",
     "value"}], "n", "mean", "std", "ci95", "metrics": {column: {"mean", "std"}},
     "vs_best": null | {"mean_diff", "ci95", "p_value", "test", "pairs", "verdict"},
     "test"?: {"model.ndcg_at_5": {"mean", "std", "ci95"}}}, ...]}

A run's value is its objective metric at its best validation (DESIGN.md 5 rule 4). The
statistics count completed and early-stopped runs; pruned and failed runs are listed with
their status and not counted. Configurations are ranked best first; those with no counted run
rank last.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from engine.core.errors import UserError, close_match
from engine.io.metrics import read_metrics
from engine.study import stats
from engine.study.claims import read_pairs
from engine.study.spec import StudySpec
from engine.study.store import read_configurations

COUNTED = ("completed", "early_stopped")
FINISHED = (*COUNTED, "pruned")          # exit code 0: every run ended one of these ways
_RECORD_STATUS = {"claimed": "running", "interrupted": "interrupted", "pending": "pending"}


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def at_best(metrics: dict, column: str) -> float | None:
    """A history column's value at the run's best validation."""
    history, best = metrics.get("history") or {}, (metrics.get("best") or {}).get("epoch")
    epochs = history.get("epoch") or []
    if best is None or best not in epochs:
        return None
    values = history.get(column) or []
    index = epochs.index(best)
    return _number(values[index]) if index < len(values) else None


def flat_test(test: Any) -> dict[str, float]:
    """metrics.json's `test` object (numbers, nested one level at most), keys joined by dots."""
    flat = {}
    for key, value in (test or {}).items() if isinstance(test, dict) else ():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": _number(v) for k, v in value.items()})
        else:
            flat[key] = _number(value)
    return {k: v for k, v in flat.items() if v is not None}


def _runs(study_dir: Path, spec: StudySpec, number: int, pairs: dict) -> list[dict]:
    runs = []
    for index, replicate in enumerate(spec.replicates):
        record = pairs.get((number, index))
        if record is None or record.get("run_id") is None:
            continue
        metrics = read_metrics(study_dir / "runs" / record["run_id"])
        status = (record.get("status") if record["state"] == "done"
                  else _RECORD_STATUS.get(record["state"], record["state"]))
        runs.append({"run_id": record["run_id"], "replicate": replicate, "status": status,
                     "value": record.get("value") if record["state"] == "done" else None,
                     "_index": index, "_metrics": metrics})
    return runs


def _configuration(study_dir: Path, spec: StudySpec, config: dict, pairs: dict) -> dict:
    runs = _runs(study_dir, spec, config["configuration"], pairs)
    counted = [r for r in runs if r["status"] in COUNTED and r["value"] is not None]
    entry = {"configuration": config["configuration"], "params": config["params"],
             "trial": config.get("trial"), "runs": runs,
             **stats.summary([r["value"] for r in counted])}
    columns = sorted({c for r in counted for c in (r["_metrics"].get("history") or {})})
    entry["metrics"] = {}
    for column in columns:
        values = [v for r in counted if (v := at_best(r["_metrics"], column)) is not None]
        if values and column != "epoch":
            s = stats.summary(values)
            entry["metrics"][column] = {"mean": s["mean"], "std": s["std"]}
    tests = [flat_test(r["_metrics"].get("test")) for r in counted]
    keys = sorted({k for t in tests for k in t})
    if keys:
        entry["test"] = {}
        for key in keys:
            s = stats.summary([t[key] for t in tests if key in t])
            entry["test"][key] = {"mean": s["mean"], "std": s["std"], "ci95": s["ci95"]}
    entry["_counted"] = {r["_index"]: r["value"] for r in counted}
    return entry


def _check_metric(study_dir: Path, spec: StudySpec, histories: list[dict]) -> None:
    """The objective is a column of the runs' histories (study.toml edited by hand would
    otherwise rank every configuration on nothing)."""
    if histories and not any(spec.metric in h for h in histories):
        columns = sorted({c for h in histories for c in h})
        raise UserError("the study's objective is not a column of its runs' histories",
                        where=f"{study_dir / 'study.toml'} objective.metric",
                        expected="one of " + ", ".join(columns), found=spec.metric,
                        hint=close_match(spec.metric, columns))


def collect(study_dir: Path, spec: StudySpec, study_id: str) -> dict:
    """results.json's content, from the pair records and the runs' metrics.json (each run's
    validation history of the objective is kept under `_curves` for the picture)."""
    pairs = read_pairs(study_dir)
    configs = [_configuration(study_dir, spec, c, pairs)
               for c in read_configurations(study_dir, spec)]
    sign = 1.0 if spec.direction == "min" else -1.0
    configs.sort(key=lambda c: (c["n"] == 0, sign * c["mean"] if c["n"] else 0.0,
                                c["configuration"]))
    best = configs[0] if configs and configs[0]["n"] else None
    for entry in configs:
        entry["vs_best"] = None
        if best is not None and entry is not best:
            shared = sorted(set(entry["_counted"]) & set(best["_counted"]))
            entry["vs_best"] = stats.paired([entry["_counted"][i] for i in shared],
                                            [best["_counted"][i] for i in shared],
                                            spec.direction)
    curves = {c["configuration"]: [r["_metrics"].get("history") or {} for r in c["runs"]
                                   if r["status"] in COUNTED] for c in configs}
    _check_metric(study_dir, spec, [h for runs in curves.values() for h in runs if h])
    for entry in configs:
        entry.pop("_counted")
        for run in entry["runs"]:
            run.pop("_index")
            run.pop("_metrics")
    statuses = [r["status"] for c in configs for r in c["runs"]]
    return {"study_id": study_id, "recipe": spec.recipe,
            "objective": {"metric": spec.metric, "direction": spec.direction},
            "replicates": {"key": spec.replicate_key, "values": list(spec.replicates)},
            "runs_total": spec.n_configurations() * len(spec.replicates),
            "runs_by_status": {s: statuses.count(s) for s in sorted(set(statuses))},
            "configurations": configs, "_curves": curves}
