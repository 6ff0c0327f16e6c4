"""`python -m engine sweep`: make a study (or take one up again) and run its workers.

    {output_dir}/studies/{recipe}/{study_id}/
        study.toml  optuna.journal  configurations/  pairs/  lock  workers/
        runs/{run_id}/  results.json  results.md  study.png

With `--workers 1` this process is the worker; with N > 1 it is one of them, the N - 1 others
are forks of it taken before its checks (`engine.study.local`; `python -m engine sweep --worker
STUDY_DIR` processes where there is no fork), their output in `workers/`, and it shows the
study's progress. A signal is passed on to the workers once: each stops its run with a
resumable checkpoint. Workers end with this process (a kill -9 of it included: they get
SIGTERM from the kernel).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.core.errors import UserError, first_line
from engine.io.files import atomic_write_text
from engine.io.run_dir import check_writable, new_run_id
from engine.study import claims, store
from engine.study.local import die_with_parent
from engine.study.spec import StudySpec
from engine.study.study_toml import load
from engine.study.worker import SignalFlag, work


def create(spec: StudySpec, output_dir: str) -> Path:
    """The new study's directory with study.toml, the trial store and (a grid) its
    configurations; made only once every check has passed."""
    root = Path(output_dir) / "studies" / spec.recipe
    check_writable(root, output_dir)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        study_id = new_run_id()
        try:
            (root / study_id).mkdir()
            break
        except FileExistsError:
            continue
    study_dir = root / study_id
    try:
        _fill(spec, study_id, study_dir)
    except BaseException as exc:
        # the folder is this call's own and holds no run yet: a half-made study would only
        # be a folder `--resume` cannot open
        shutil.rmtree(study_dir, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, UserError):
            raise UserError("the study's trial store cannot be made",
                            where=store.where_trials(spec, study_dir),
                            expected="a journal file or database this user can write",
                            found=first_line(exc)) from None
        raise
    return study_dir


def _fill(spec: StudySpec, study_id: str, study_dir: Path) -> None:
    import tomli_w  # deferred: start-up time
    atomic_write_text(study_dir / "study.toml", "# python -m engine sweep --resume "
                      f"{study_dir}\n" + tomli_w.dumps({"study_id": study_id,
                                                        **spec.to_toml_dict()}))
    (study_dir / "runs").mkdir()
    storage = store.open_storage(spec.storage, study_dir)
    study = store.optuna_study(spec, study_id, storage, create=True)
    if not spec.search:
        store.create_grid(spec, study, study_dir)


def progress(study_dir: Path, spec: StudySpec) -> tuple[int, int, int]:
    """(ended, failed, total) runs of the study, from the pair records."""
    records = claims.read_pairs(study_dir).values()
    ended = [r for r in records if r["state"] == "done"]
    failed = sum(r.get("status") == "failed" for r in ended)
    return len(ended), failed, spec.n_configurations() * len(spec.replicates)


def _bar(study_dir: Path, spec: StudySpec) -> Any:
    from tqdm import tqdm  # deferred: start-up time
    ended, _, total = progress(study_dir, spec)
    # stderr not a terminal (a log file, a test): no bar, as for a run's epochs
    return tqdm(total=total, initial=ended, desc="study", unit="run", dynamic_ncols=True,
                disable=None)


def start_workers(study_dir: Path, n: int, recipes: str | None) -> list[subprocess.Popen]:
    """Start `n` worker processes on this machine, each logging to workers/; their handles."""
    logs = study_dir / "workers"
    logs.mkdir(exist_ok=True)
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "engine", "sweep", "--worker", str(study_dir)]
        if recipes:
            cmd += ["--recipes", recipes]
        with open(logs / f"worker-{os.getpid()}-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=functools.partial(
                                              die_with_parent, os.getpid())))
    return procs


def run_workers(study_dir: Path, workers: int, recipes: str | None,
                standby: Any = None) -> str:
    """Run the study to its end with `workers` processes; "done", "failed", "interrupted" or
    "unfinished" (a worker died and left runs nobody took over: resume the study) or
    "elsewhere" (what is left is being run by workers of other processes). `standby`: the
    forks of this process that become the other workers (`engine.study.local`); without it
    they are started as `sweep --worker` processes."""
    spec, _ = load(study_dir)
    bar = _bar(study_dir, spec)
    try:
        if workers == 1:
            outcome = work(study_dir, recipes=recipes, on_done=lambda *_: bar.update(1))
        else:
            outcome = _work_among(study_dir, spec, workers, recipes, bar, standby)
    finally:
        bar.close()
    ended, failed, total = progress(study_dir, spec)
    if outcome == "interrupted":
        return outcome
    if ended < total:
        return "elsewhere" if _running_elsewhere(study_dir) else "unfinished"
    return "failed" if failed else "done"


def _running_elsewhere(study_dir: Path) -> int:
    """Runs that live workers of other processes (other machines) still hold."""
    return sum(r["state"] == "claimed" and not claims.abandoned(r)
               for r in claims.read_pairs(study_dir).values())


def _work_among(study_dir: Path, spec: StudySpec, workers: int, recipes: str | None,
                bar: Any, standby: Any) -> str:
    """This process, warm from its checks (torch, the recipe, the first forward pass), is one
    of the `workers`; the others (forks waiting since before the checks, or new processes)
    take pairs as soon as they are up."""
    procs = (standby.start(study_dir) if standby is not None
             else start_workers(study_dir, workers - 1, recipes))

    def catch_up(*_: Any) -> None:
        bar.update(progress(study_dir, spec)[0] - bar.n)

    try:
        mine = work(study_dir, recipes=recipes, on_done=catch_up)
    except BaseException:
        _forward(procs)
        raise
    if mine == "interrupted":
        _forward(procs)
    outcome = _supervise(study_dir, spec, procs, bar, forwarded=mine == "interrupted")
    return "interrupted" if mine == "interrupted" else outcome


def _forward(procs: list) -> None:
    """SIGTERM to the workers still running: each stops its run resumably."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)


def _supervise(study_dir: Path, spec: StudySpec, procs: list, bar: Any,
               forwarded: bool = False) -> str:
    flag = SignalFlag().install()
    try:
        while any(p.poll() is None for p in procs):
            if flag.stopped() and not forwarded:
                _forward(procs)
                forwarded = True
            ended, _, _ = progress(study_dir, spec)
            bar.update(ended - bar.n)
            time.sleep(0.5)
    finally:
        flag.restore()
    ended, _, _ = progress(study_dir, spec)
    bar.update(ended - bar.n)
    if forwarded or any(p.returncode == 130 for p in procs):
        return "interrupted"
    return "done"


def describe_end(study_dir: Path, outcome: str) -> str:
    """The line the sweep prints when it ends."""
    spec, _ = load(study_dir)
    ended, failed, total = progress(study_dir, spec)
    again = f"python -m engine sweep --resume {study_dir}"
    if outcome == "interrupted":
        return f"stopped by a signal after {ended} of {total} runs; resume with: {again}"
    if outcome == "elsewhere":
        return (f"nothing left for this sweep: {ended} of {total} runs ended, "
                f"{_running_elsewhere(study_dir)} still running in other workers; "
                f"python -m engine report {study_dir} shows the results so far")
    if outcome == "unfinished":
        return (f"a worker ended early: {ended} of {total} runs ended; resume with: {again} "
                f"(see {study_dir / 'workers'})")
    text = f"study {study_dir}: {total} runs ended ({failed} failed); results in " \
           f"{study_dir / 'results.md'}"
    if failed:
        text += f"; run the failed ones again with: {again} --retry-failed"
    return text

