"""A worker: a long-lived process that claims (configuration, replicate) pairs one after
another and runs each as an ordinary run, by the same path as `engine run`.

    resolve(recipe, base=study.toml [base], sets=params + replicate) -> fit(run_dir=...)

Each run's directory is `runs/{run_id}/` in the study directory; its metrics.json carries the
study block `{"study_id", "configuration", "params", "replicate"}`. A run taken over from a dead
worker, or interrupted earlier, continues from its checkpoints/last.pt (exact resume). Torch,
the recipe and Optuna load once per worker, not once per run.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from engine.core.errors import UserError, UserErrors
from engine.io import plot_service
from engine.io.fit import RecipeFailed, fit
from engine.io.metrics import read_metrics
from engine.io.plot_service import wait_for_plots
from engine.io.registry import resolve
from engine.study import claims, store
from engine.study.checks import registry_of, value_set
from engine.study.report import write_results
from engine.study.results import COUNTED, FINISHED, at_best
from engine.study.spec import StudySpec
from engine.study.study_toml import load

ENDED = (*FINISHED, "failed")


@attrs.frozen
class Outcome:
    """How one (configuration, replicate) run ended: status, objective value, error, seconds in
    fit."""
    status: str
    value: float | None = None
    error: str | None = None
    fit_s: float | None = None      # seconds inside fit (the rest is the study's overhead)


@attrs.frozen
class Context:
    """What every run of one worker shares."""

    study_dir: Path
    study_id: str
    spec: StudySpec
    registry: str
    storage: Any
    study: Any


class SignalFlag:
    """Whether SIGINT or SIGTERM arrived. Between runs this handler only counts; during a run
    fit's own handler stops the run (and restores this one after). A signal that lands while
    fit's handler is in place but the run is already ending would be lost to the worker: the
    wakeup fd (written for every signal, whichever Python handler runs) catches it too."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict = {}
        self._pipe: tuple[int, int] | None = None
        self._old_fd = -1

    def install(self) -> SignalFlag:
        """Install the SIGINT / SIGTERM handlers that set the flag."""
        if threading.current_thread() is threading.main_thread():
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._pipe = (read, write)
            self._old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1

    def stopped(self) -> bool:
        """Whether a stop signal arrived."""
        if self._pipe is not None:
            try:
                data = os.read(self._pipe[0], 512)
            except BlockingIOError:
                data = b""
            self.count += sum(b in (signal.SIGINT, signal.SIGTERM) for b in data)
        return self.count > 0

    def restore(self) -> None:
        """Put back the handlers from before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_fd)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def said(record: dict, outcome: Outcome) -> None:
    """A worker's line for a finished pair (its log, or a `--worker`'s stdout)."""
    print(f"configuration {record['configuration']} replicate {record['replicate']}: "
          f"{outcome.status} (value {outcome.value}) runs/{record['run_id']}", flush=True)


def objective_value(history: dict, best_epoch: int | None, metric: str) -> float | None:
    """The objective: `metric` at the run's best validation (None when it has none)."""
    return at_best({"history": history, "best": {"epoch": best_epoch}}, metric)


class Pruning:
    """`stop_when` for a run with --prune: each validation's objective goes to the median
    pruner of the run's replicate; a run it prunes ends with status `pruned`."""

    def __init__(self, ctx: Context, replicate: int) -> None:
        self.metric = ctx.spec.metric
        self.study = store.pruning_study(ctx.spec, ctx.study_id, ctx.storage, replicate)
        self.trial = self.study.ask()
        self.reported: set = set()

    def __call__(self, state: Any) -> str | None:
        # a resumed run reports the validations from before the interruption too
        for epoch, value in zip(state.history["epoch"], state.history.get(self.metric, ())):
            if epoch not in self.reported and value is not None and math.isfinite(value):
                self.trial.report(value, epoch)
                self.reported.add(epoch)
        return "pruned" if self.trial.should_prune() else None

    def end(self, outcome: Outcome) -> None:
        """Tell Optuna how the run ended (a value, pruned or failed)."""
        from optuna.trial import TrialState  # deferred: start-up time
        if outcome.status == "interrupted":
            return   # the resumed run asks a trial of its own
        if outcome.status in COUNTED and outcome.value is not None:
            self.study.tell(self.trial, outcome.value)
        else:
            self.study.tell(self.trial, state=TrialState.PRUNED if outcome.status == "pruned"
                            else TrialState.FAIL)


def run_pair(ctx: Context, record: dict, params: dict, pruning: Pruning | None) -> Outcome:
    """Run (or continue) one pair's run in its run directory."""
    spec = ctx.spec
    replicate = spec.replicates[record["replicate"]]
    sets = [*(value_set(k, v) for k, v in params.items()), value_set(spec.replicate_key,
                                                                    replicate)]
    run_dir = ctx.study_dir / "runs" / record["run_id"]
    old = read_metrics(run_dir)
    if old.get("status") in ENDED:   # ended before its worker could record it
        return Outcome(old["status"], objective_value(old.get("history") or {}, (old.get(
            "best") or {}).get("epoch"), spec.metric))
    last = run_dir / "checkpoints" / "last.pt"
    block = {"study": {"study_id": ctx.study_id, "configuration": record["configuration"],
                       "params": params, "replicate": replicate}}
    try:
        entry, recipe, cfg = resolve(spec.recipe, recipes=ctx.registry, base=spec.base,
                                     base_source=f"{ctx.study_dir / 'study.toml'} [base]",
                                     sets=sets)
        started = time.perf_counter()
        result = fit(recipe, cfg, run_dir=run_dir, resume=last if last.is_file() else None,
                     name=entry.name, stop_when=pruning, metrics_extra=block)
    except RecipeFailed as exc:
        result = exc.result
    except (UserError, UserErrors) as exc:
        return Outcome("failed", None, exc.render())
    value = objective_value(result.history, result.best_epoch, spec.metric)
    return Outcome(result.status, value, (result.error or {}).get("message"),
                   round(time.perf_counter() - started, 4))


def _claim(ctx: Context) -> tuple[dict, dict, Pruning | None] | None:
    """Under the study lock: the next pair, its configuration's params, its pruner."""
    spec = ctx.spec
    with claims.study_lock(ctx.study_dir):
        configs = store.read_configurations(ctx.study_dir, ctx.spec)
        ask = None
        if spec.search and len(configs) < spec.trials:
            def ask(number: int) -> dict:
                configs.append(store.ask_configuration(spec, ctx.study, ctx.study_dir, number))
                return configs[-1]
        record = claims.next_pair(ctx.study_dir, list(configs), len(spec.replicates), ask)
        if record is None:
            return None
        params = next(c["params"] for c in configs
                      if c["configuration"] == record["configuration"])
        pruning = Pruning(ctx, record["replicate"]) if spec.prune else None
    return record, params, pruning


def _record(ctx: Context, record: dict, outcome: Outcome) -> None:
    """Under the study lock: the pair is done; its configuration's trial is told once all
    its replicates are; results.json and results.md are rewritten."""
    with claims.study_lock(ctx.study_dir):
        claims.finish(ctx.study_dir, record, outcome.status, outcome.value, outcome.error,
                      outcome.fit_s)
        number = record["configuration"]
        pairs = claims.read_pairs(ctx.study_dir)
        mine = [pairs.get((number, i)) for i in range(len(ctx.spec.replicates))]
        if all(p is not None and p["state"] == "done" for p in mine):
            configs = store.read_configurations(ctx.study_dir, ctx.spec)
            trial = next(c["trial"] for c in configs if c["configuration"] == number)
            values = [p["value"] for p in mine if p["status"] in COUNTED and
                      p["value"] is not None]
            store.tell_configuration(ctx.study, trial, values,
                                     any(p["status"] == "pruned" for p in mine))
        write_results(ctx.study_dir, ctx.spec, ctx.study_id)


def work(study_dir: Path, *, recipes: str | None = None, on_done: Any = None) -> str:
    """Run pairs until none is left or a signal arrives. Returns "interrupted", "failed" (some
    run of the study failed) or "done"."""
    study_dir = Path(study_dir)
    spec, study_id = load(study_dir)
    storage = store.open_study_storage(spec, study_dir)
    ctx = Context(study_dir, study_id, spec, registry_of(spec, recipes), storage,
                  store.optuna_study(spec, study_id, storage, study_dir=study_dir))
    heartbeat, flag = claims.Heartbeat(), SignalFlag().install()
    interrupted = False
    plots = plot_service.service()
    live, plots.live = plots.live, False   # each run's metrics.png is drawn once, at its end
    try:
        while not flag.stopped():
            claimed = _claim(ctx)
            if claimed is None:
                break
            record, params, pruning = claimed
            heartbeat.path = claims.pair_path(study_dir, record["configuration"],
                                              record["replicate"])
            try:
                outcome = run_pair(ctx, record, params, pruning)
            except KeyboardInterrupt:   # a second signal: stop now, the files are whole
                outcome = Outcome("interrupted")
            heartbeat.path = None
            if pruning is not None:
                pruning.end(outcome)
            if outcome.status == "interrupted":
                print(f"configuration {record['configuration']} replicate "
                      f"{record['replicate']}: interrupted, resumable (runs/{record['run_id']})",
                      flush=True)
                with claims.study_lock(study_dir):
                    claims.release(study_dir, record)
                interrupted = True
                break
            _record(ctx, record, outcome)
            if on_done is not None:
                on_done(record, outcome)
    finally:
        interrupted = flag.stopped() or interrupted
        flag.restore()
        heartbeat.stop()
        plots.live = live
    with claims.study_lock(study_dir):
        data = write_results(study_dir, spec, study_id, picture=True)
    wait_for_plots()   # study.png, drawn by the plot helper, is on disk when the worker says so
    if interrupted:
        return "interrupted"
    return "failed" if data["runs_by_status"].get("failed") else "done"
