"""fit(): where the core loop and the run directory's writers meet, in one visible place.

    result = fit(recipe, cfg, run_dir="artifacts/models/ae/runs/x")
    result.best_val_loss, result.history["val_loss"], result.model

Set up (build, first-batch check, wrap), then hand `engine.core.loop.run_loop` its wiring:
with a run directory the standard writers (engine.io.writers) and the run directory's
checkpointer (engine.io.checkpointer); without one, nothing that writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

import steps
from engine.core import distributed, signals
from engine.core.building import build_objects, check_inputs
from engine.core.devices import check_precision, resolve_device
from engine.core.errors import UserError
from engine.core.events import Event, listeners
from engine.core.failures import RecipeRaised, failed_state
from engine.core.loop import run_loop
from engine.core.preflight import check_batch
from engine.core.recipe import Recipe
from engine.core.signals import StopRequest
from engine.core.state import LoopState, Run, history_lists
from engine.core.wiring import NoCheckpoints, Wiring
from engine.io import writers
from engine.io.checkpoint import best_weights_beside, check_resumable, restore
from engine.io.checkpointer import RunDirCheckpointer
from engine.io.file_writer import FileWriter, failure_message
from engine.io.files import remove_temporaries
from engine.io.metrics import OWN_KEYS, read_metrics, write_metrics


@attrs.frozen
class RunResult:
    """What `fit` returns. `model` holds the best weights; `history` is a dict of equal-length
    lists, one entry per validation."""

    history: dict
    best_epoch: int | None
    best_val_loss: float | None
    stopped_early: bool
    status: str
    run_dir: Path | None
    model: torch.nn.Module
    run_id: str | None = None
    error: dict | None = None
    state: LoopState | None = None


class RecipeFailed(Exception):
    """Recipe code raised during training: the run ended with status `failed` (exit code 1)."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def fit(recipe: Recipe, cfg: Any, *, run_dir: str | Path | None = None, callbacks: tuple = (),
        resume: str | Path | None = None, name: str | None = None,
        stop_when: Callable[[LoopState], str | None] | None = None,
        metrics_extra: dict | None = None) -> RunResult:
    """Train `recipe` with `cfg`. With `run_dir`, write every file of a run there (created if
    missing; metrics.png is drawn by a helper process and lands moments after fit returns:
    `engine.wait_for_plots()` waits for it, as `python -m engine run` and interpreter exit do);
    without, write nothing and keep the best weights in memory. `resume` names a
    checkpoint to continue from. `name` is the registry key (defaults to `recipe.name`).
    `stop_when(state)`, asked after each validation, may end the run with the status it
    returns (a study prunes runs this way); callbacks only observe. `metrics_extra` holds
    top-level metrics.json entries to write with the run's own (a study's `study` block)."""
    check_inputs(recipe, cfg)
    world = distributed.from_env()
    device = resolve_device(cfg.train.device, world.local_rank if world.active else None)
    check_precision(device, cfg.train.precision)
    world = distributed.init(world, device)
    try:
        # each rank's caller made its own run id: rank 0's names the run on every rank
        run_dir = distributed.from_main(run_dir, world)
        run = _set_up(recipe, cfg, world, device, run_dir, resume, name or recipe.name)
        if resume is not None and run.run_dir is not None:
            # a resumed run keeps the entries its metrics.json had (a study block, baselines)
            old = read_metrics(run.run_dir)
            run.metrics_extra.update({k: v for k, v in old.items() if k not in OWN_KEYS})
        run.metrics_extra.update(metrics_extra or {})
        result = _train(run, world, tuple(callbacks), resume, stop_when)
        distributed.finish_together(world)
        return result
    finally:
        distributed.teardown(world)


def _set_up(recipe, cfg, world, device, run_dir, resume, name) -> Run:
    """Build the run's objects; the run directory waits for the first batch's check."""
    model, loaders, optimizer, schedule = build_objects(recipe, cfg, world, device)
    if resume is not None:
        check_resumable(resume, name, model, optimizer)
    train_model = distributed.wrap(model, world, device)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    run_dir = Path(run_dir) if run_dir is not None else None
    return Run(recipe=recipe, cfg=cfg, model=model, train_model=train_model,
               optimizer=optimizer, schedule=schedule,
               scaler=steps.make_scaler(device, cfg.train.precision), loaders=loaders,
               device=device, run_dir=run_dir, run_id=run_dir.name if run_dir else None,
               name=name, rank=world.rank, world_size=world.world_size,
               files=FileWriter() if run_dir is not None and world.is_main else None)


def _starter(run: Run, world: Any, resumed: bool) -> Callable[[Any], None]:
    """The loop's `before_start`: check the first batch the loop drew, then make the run
    directory, so that every mistake a check can find is found before any folder exists."""
    def before_start(batch: Any) -> None:
        if batch is not None:
            check_batch(run.recipe, run.cfg, run.model, batch, run.device)
        if run.run_dir is None or not world.is_main:
            return
        try:
            (run.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError("the run directory cannot be created", where=str(run.run_dir),
                            expected="a folder this user can write",
                            found=exc.strerror or str(exc)) from None
        if resumed:
            remove_temporaries(run.run_dir)   # what a kill during a write left behind
    return before_start


def _train(run: Run, world: Any, callbacks: tuple, resume: Any, stop_when: Any) -> RunResult:
    state, resume_rng = LoopState(run=run), None
    if resume is not None:
        state, resume_rng = restore(run, resume)
        state = attrs.evolve(state, best_weights=best_weights_beside(resume, state))
    writing = run.run_dir is not None
    first, last = writers.standard(run) if writing and world.is_main else ((), ())
    outer = signals.active()   # the `run` verb installed the handlers when it started
    stop = outer or StopRequest().install()
    table = listeners((*first, *run.recipe.callbacks, *callbacks, *last))
    # an observer of CHECKPOINT_WRITTEN finds the file on disk: those writes wait for it
    checkpointer = (RunDirCheckpointer(run, world.is_main,
                                       sync=bool(table[Event.CHECKPOINT_WRITTEN]))
                    if writing else NoCheckpoints())
    wiring = Wiring(run=run, world=world, table=table, checkpointer=checkpointer, stop=stop,
                    before_start=_starter(run, world, resume is not None), stop_when=stop_when)
    try:
        state = run_loop(wiring, state, resume_rng)
    except RecipeRaised as raised:
        _flush_quietly(run)
        raise RecipeFailed(str(raised), _result(run, raised.state)) from raised.__cause__
    except BaseException:
        _flush_quietly(run)   # a second signal: what was handed over still lands whole
        raise
    finally:
        if outer is None:
            stop.restore()
    return _result(run, _files_written(run, state))


def _files_written(run: Run, state: LoopState) -> LoopState:
    """The final state once every file handed to the run's writer is on disk; a write that
    failed fails the run (metrics.json says so, if it can still be written)."""
    if run.files is None:
        return state
    try:
        run.files.close()
        return state
    except OSError as exc:
        state = failed_state(state, max(state.epoch - 1, 0), max(state.step - 1, 0),
                             failure_message(exc, run.run_dir), None)
    logging.getLogger("engine").error("error: %s", state.error["message"])
    try:
        write_metrics(run.run_dir, recipe=run.name, run_id=run.run_id, status=state.status,
                      history=state.history, best_epoch=state.best_epoch,
                      best_val_loss=state.best_val_loss, error=state.error,
                      extra=run.metrics_extra)
    except OSError:
        pass   # the disk refuses even that: the message above and the exit code say it
    return state


def _flush_quietly(run: Run) -> None:
    if run.files is not None:
        try:
            run.files.close()
        except OSError:
            pass   # the first error is the one reported


def _result(run: Run, state: LoopState) -> RunResult:
    if state.best_weights is not None:
        run.model.load_state_dict(state.best_weights)
    return RunResult(
        history=history_lists(state.history), best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss, stopped_early=state.status == "early_stopped",
        status=state.status, run_dir=run.run_dir, model=run.model, run_id=run.run_id,
        error=({k: v for k, v in state.error.items() if k != "traceback"}
               if state.error else None), state=state)
