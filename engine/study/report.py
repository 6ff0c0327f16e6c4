"""The study's living record: results.json, results.md and study.png, each rewritten
atomically (engine.io.files) and never anything in a run's folder.

results.json and results.md are rewritten after every finished run (they cost milliseconds);
study.png when a worker has nothing left to run, and by `python -m engine report`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.core.errors import UserError
from engine.io import plot_service
from engine.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from engine.study import stats
from engine.study.picture import params_text, render
from engine.study.results import collect
from engine.study.spec import StudySpec


def write_results(study_dir: Path, spec: StudySpec, study_id: str, *,
                  picture: bool = False) -> dict:
    """Rewrite results.json and results.md (and study.png); return results.json's content."""
    data = collect(study_dir, spec, study_id)
    curves = data.pop("_curves")
    with _named_on_failure(study_dir / "results.json"):
        atomic_write_json(study_dir / "results.json", data)
    with _named_on_failure(study_dir / "results.md"):
        atomic_write_text(study_dir / "results.md", markdown(data))
    if picture:
        with _named_on_failure(study_dir / "study.png"):
            write_picture(study_dir / "study.png", data, curves)
    return data


@contextlib.contextmanager
def _named_on_failure(path: Path) -> Iterator[None]:
    # a full disk or a folder in the file's place: the report's own files, rewritten from the
    # records each time, so nothing is lost; say which one
    try:
        yield
    except OSError as exc:
        raise UserError("a study's report file could not be written", where=str(path),
                        expected="a file this user can write (sweep rewrites it)",
                        found=exc.strerror or str(exc)) from None


def write_picture(path: Path, data: dict, curves: dict) -> None:
    """study.png: by the plot helper when this process has one up (its matplotlib is loaded:
    ~0.2 s instead of ~1.6 s; `wait_for_plots` waits for it), else here."""
    payload = {"data": data, "curves": [[number, histories] for number, histories
                                        in curves.items()]}
    service = plot_service.service()
    if service.running():
        service.submit_figure(path, "engine.study.picture:render", payload)
    else:
        atomic_write_bytes(path, render(payload))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


_params = params_text


def _interval(ci: list | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "–"


def markdown(data: dict) -> str:
    """results.md: the ranking, each configuration against the best, the test figures."""
    objective = data["objective"]
    configs = data["configurations"]
    done = sum(n for s, n in data["runs_by_status"].items() if s not in
               ("running", "interrupted", "pending"))
    lines = [f"# Study {data['study_id']} ({data['recipe']})", "",
             f"Objective: `{objective['metric']}` ({objective['direction']}), the value at each "
             f"run's best validation. Replicates: `{data['replicates']['key']}` = "
             f"{', '.join(map(str, data['replicates']['values']))}. Runs: {done} of "
             f"{data['runs_total']} ended (" + ", ".join(
                 f"{n} {s}" for s, n in data["runs_by_status"].items()) + ").", "",
             "| rank | configuration | n | mean | std | 95% CI | vs best: mean diff | p | "
             "verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rank, c in enumerate(configs, 1):
        vs = c["vs_best"]
        verdict = ("best" if rank == 1 and c["n"] else vs["verdict"] if vs else
                   "no verdict (fewer than 2 paired replicates)" if c["n"] else _unfinished(c))
        lines.append(f"| {rank} | {c['configuration']}: {_params(c['params'])} | {c['n']} | "
                     f"{_fmt(c['mean'])} | {_fmt(c['std'])} | {_interval(c['ci95'])} | "
                     f"{_fmt(vs['mean_diff']) if vs else '–'} | "
                     f"{_fmt(vs['p_value']) if vs else '–'} | {verdict} |")
    lines += ["", *conclusion(data)]
    tests = [c for c in configs if c.get("test")]
    if tests:
        lines += ["", "## Test figures (mean ± std over replicates)", ""]
        keys = sorted({k for c in tests for k in c["test"]})
        lines += ["| configuration | " + " | ".join(keys) + " |",
                  "| --- |" + " --- |" * len(keys)]
        for c in tests:
            cells = [f"{_fmt(c['test'][k]['mean'])} ± {_fmt(c['test'][k]['std'])}"
                     if k in c["test"] else "–" for k in keys]
            lines.append(f"| {c['configuration']}: {_params(c['params'])} | "
                         + " | ".join(cells) + " |")
    failed = [(c, r) for c in configs for r in c["runs"] if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs (kept; `sweep --resume DIR --retry-failed` runs them "
                  "again)", ""]
        lines += [f"- configuration {c['configuration']} ({_params(c['params'])}), replicate "
                  f"{r['replicate']}: runs/{r['run_id']}/" for c, r in failed]
    return "\n".join(lines) + "\n"


def _unfinished(config: dict) -> str:
    """Why a configuration has no counted run: its runs' statuses."""
    statuses = [r["status"] for r in config["runs"]]
    if not statuses:
        return "not started"
    return "no counted run (" + ", ".join(f"{statuses.count(s)} {s}" for s in
                                          sorted(set(statuses))) + ")"


def conclusion(data: dict) -> list[str]:
    """Which configuration is best, and whether the others are worse beyond replicate noise
    (or why no test can tell)."""
    configs = data["configurations"]
    if not configs or not configs[0]["n"]:
        return ["No run has finished yet."]
    best = configs[0]
    out = [f"Best: configuration {best['configuration']} ({_params(best['params'])}), mean "
           f"{_fmt(best['mean'])} over {best['n']} run(s)."]
    for c in configs[1:]:
        vs = c["vs_best"]
        if vs is None:
            out.append(f"- {_params(c['params'])}: no paired comparison (fewer than two "
                       f"replicates finished in both).")
            continue
        line = (f"- {_params(c['params'])}: worse by {_fmt(vs['mean_diff'])} on average (95% "
                f"CI {_interval(vs['ci95'])}), p = {_fmt(vs['p_value'])} ({vs['test']}, "
                f"{vs['pairs']} pairs): {vs['verdict']}")
        floor = stats.smallest_p(vs["pairs"])
        if vs["verdict"] != "worse" and floor >= stats.ALPHA:
            line += (f"; with {vs['pairs']} pairs the smallest possible p is {floor:.4g}, so no "
                     f"verdict of \"worse\" is possible: run more replicates")
        out.append(line + ".")
    return out


