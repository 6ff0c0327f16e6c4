"""The training loop, and only the loop: `run_loop` over a `Wiring` and a `LoopState`.

It reads top to bottom: per epoch train, validate, decide, checkpoint, tell the observers. Every
decision is a pure function of the state (`engine.core.state`); what is written to disk is the
checkpointer's and the observers' business, both handed in (`engine.io.fit` wires the run
directory's). Per step the loop keeps the loss and gradient norm on the device
(`engine.core.window`) and reads them only at log intervals and epoch ends, so it adds no host
sync to a hand-written loop. The step itself is made of the `steps/` functions a script uses.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

import torch

import steps
from engine.core import distributed, rng
from engine.core.batches import epoch_batches, start_run
from engine.core.best_weights import copy_best
from engine.core.building import blame
from engine.core.errors import UserError
from engine.core.events import Event, emit, emit_counted, emit_quietly, emit_rest_quietly
from engine.core.failures import (
    RecipeRaised,
    RunEnded,
    StoppedBeforeStart,
    StopRequested,
    TrainingFailed,
    failed_state,
)
from engine.core.nonfinite import drop_step
from engine.core.recipe import StepContext
from engine.core.state import EpochTotals, LoopState, evolve, record_validation, should_validate
from engine.core.validation import history_row, validate
from engine.core.wiring import Wiring


def run_loop(w: Wiring, state: LoopState, resume_rng: Any = None) -> LoopState:
    """Run the epochs from `state`, with each way a run can end turned into its final state:
    completed / early_stopped / a `stop_when` status, interrupted (a signal: last.pt written;
    before the first step: nothing written), failed (a non-finite loss). Recipe code that raises
    ends it as RecipeRaised, carrying the failed state, after FAILURE and FIT_END."""
    ending: list = []   # [the final state, FIT_END observers done] once FIT_END is under way
    try:
        state = _ended(w, state, resume_rng)
        # all inside the try: a second signal may land on any line, the calls' entries too
        if state.status == "running":
            state = evolve(state, status="completed")
        ending[:] = [state, 0]
        emit_counted(w.table, Event.FIT_END, ending)
    except StoppedBeforeStart as stopped:
        return evolve(stopped.state, status="interrupted")   # no observer has started
    except KeyboardInterrupt as exc:
        # a second signal, even one landing while the first one's last.pt is written: stop
        # now; the files on disk are whole (atomic writes), and FIT_END's observers finish
        if ending:
            emit_rest_quietly(w.table, Event.FIT_END, ending)
        else:
            emit_quietly(w.table, Event.FIT_END,
                         evolve(getattr(exc, "state", state), status="interrupted"))
        raise
    return state


def _ended(w: Wiring, state: LoopState, resume_rng: Any) -> LoopState:
    """The epochs, and the state each way of ending them leaves."""
    try:
        return _epochs(w, state, resume_rng)
    except StopRequested as stopped:
        state = evolve(stopped.state, status="interrupted")
        try:
            return _save_last(w, state, mid_epoch=True)
        except KeyboardInterrupt as exc:   # a second signal during the write
            exc.state = state
            raise
        except TrainingFailed as failure:   # the stop's checkpoint could not be written
            state = failed_state(failure.state, failure.epoch, failure.step, str(failure), None)
            emit(w.table, Event.FAILURE, state)
            return state
    except TrainingFailed as failure:
        state = failed_state(failure.state, failure.epoch, failure.step, str(failure), None)
        emit(w.table, Event.FAILURE, state)
        return state
    except RecipeRaised as raised:
        cause = raised.__cause__ or raised
        message = blame(cause, w.run.recipe, w.world)
        state = failed_state(raised.state, raised.state.epoch, raised.state.step, message,
                             "".join(traceback.format_exception(cause)))
        emit_quietly(w.table, Event.FAILURE, state)
        emit_quietly(w.table, Event.FIT_END, state)
        raise RecipeRaised(message, state) from cause


def _epochs(w: Wiring, state: LoopState, resume_rng: Any) -> LoopState:
    run, train, table = w.run, w.run.cfg.train, w.table
    started = False
    try:
        if resume_rng is not None and state.batch == 0:
            rng.set_rng_state(resume_rng)   # the RNG as it was when last.pt was written
            resume_rng = None
        if train.nan_policy == "rollback" and w.rollback.point is None:
            w.rollback.take(run)   # before the first epoch ends: the start
        for epoch in range(state.epoch, train.epochs):
            # --- train one epoch (a resumed run may start inside it)
            if state.batch == 0:
                # the RNG at the epoch's start: what a mid-epoch checkpoint resumes from
                state = evolve(state, epoch=epoch, totals=EpochTotals(
                    lr=run.optimizer.param_groups[0]["lr"]),
                    epoch_rng=rng.rng_state() if w.checkpointer.writes else None)
            batches = epoch_batches(run, state, resume_rng)
            resume_rng = None
            if not started:
                batches, started = start_run(w, state, batches), True
            if table[Event.EPOCH_START]:   # the empty ones cost no call an epoch
                emit(table, Event.EPOCH_START, state)
            state = _train_epoch(w, state, batches)
            # --- validate and decide
            validated = should_validate(epoch, train.epochs, train.validate_every_n_epochs)
            if validated:
                state = _validate(w, state)
            if run.schedule is not None and run.schedule.interval == "epoch":
                run.schedule.scheduler.step()
            improved = validated and state.improved
            state = _epoch_ended(w, state, epoch, validated, improved)
            # --- checkpoint, then tell the observers
            if train.nan_policy == "rollback":
                w.rollback.take(run)
            for path in w.checkpointer.save_epoch_end(state, improved=improved):
                state = evolve(state, checkpoint_path=path)
                emit(table, Event.CHECKPOINT_WRITTEN, state)
            if validated and table[Event.VALIDATION_END]:
                emit(table, Event.VALIDATION_END, state)
            if table[Event.EPOCH_END]:
                emit(table, Event.EPOCH_END, state)
            if state.status != "running":
                break
            # a stop that arrives during the last epoch's end leaves nothing to resume
            if epoch + 1 < train.epochs and distributed.any_rank(
                    w.stop.count > 0, w.world, run.device):
                return evolve(state, status="interrupted")
        if not started:   # nothing left to train (a resume of a finished run)
            start_run(w, state, None)
        return state
    except (RunEnded, UserError):
        raise
    except KeyboardInterrupt as exc:
        exc.state = getattr(exc, "state", state)
        raise
    except Exception as exc:
        raise RecipeRaised(str(exc), state) from exc


def _epoch_ended(w: Wiring, state: LoopState, epoch: int, validated: bool,
                 improved: bool) -> LoopState:
    """The epoch's end as one new record: the next epoch, a `stop_when` status, and on an
    improvement the best weights (a device copy, no host sync: RunResult.model gets them)."""
    status = state.status
    if validated and w.stop_when is not None and status == "running":
        status = w.stop_when(state) or "running"
    best = copy_best(w.run.model, state.best_weights, w.weights) if improved else state.best_weights
    return evolve(state, epoch=epoch + 1, batch=0, totals=_NO_TOTALS, status=status,
                  best_weights=best)


_NO_TOTALS = EpochTotals()   # frozen: one record shared by every epoch's end


def _validate(w: Wiring, state: LoopState) -> LoopState:
    run, train = w.run, w.run.cfg.train
    val = validate(run, state.epoch, state.step, w.world)
    if not math.isfinite(val["val_loss"]):
        raise TrainingFailed(f"non-finite validation loss ({val['val_loss']}) after epoch "
                             f"{state.epoch + 1}", state, state.epoch, state.step)
    row = history_row(state.epoch, state.totals, val)
    state = record_validation(state, row, train.early_stopping_min_delta,
                              train.early_stopping_patience)
    if run.schedule is not None and run.schedule.interval == "validation":
        run.schedule.scheduler.step(row["val_loss"])   # the validation loss, never training's
    return state


def _train_epoch(w: Wiring, state: LoopState, batches: Any) -> LoopState:
    run, world, window = w.run, w.world, w.window
    model, optimizer, scaler, device = run.train_model, run.optimizer, run.scaler, run.device
    (move, non_blocking, accum, clip, log_every, ckpt_every, check_each_step, autocast,
     ddp_accum, step_scheduler, params, n_batches) = w.settings
    forward_batch, on_step = run.recipe.forward_batch, w.table[Event.STEP_END]
    epoch, step, batch_i = state.epoch, state.step, state.batch
    solo = not world.active   # under DDP every rank must read at the same steps (collectives)
    if window.losses or window.norms:   # left by an epoch that ended in an exception
        window.clear()
    dropping = False   # skip / rollback: the accumulation group holds a non-finite batch
    try:
        for batch in batches:
            # --- forward
            if move:
                batch = steps.move_to_device(batch, device, non_blocking)
            ctx = StepContext(device, True, epoch, step, run.rank, run.world_size)
            loss = steps.forward_loss(model, batch, forward_batch, ctx, autocast)
            boundary = accum == 1 or (batch_i + 1) % accum == 0 or batch_i + 1 == n_batches
            batch_i += 1
            # skip / rollback: under DDP every rank skips together, or the ranks' gradient
            # reductions go out of step
            if check_each_step and distributed.any_rank(not torch.isfinite(loss), world,
                                                        device):
                state = drop_step(run, evolve(state, step=step, batch=batch_i),
                                  w.rollback)
                dropping = not boundary   # the rest of this accumulation group goes with it
                continue
            if dropping:   # a group with a non-finite batch makes no update at all
                dropping = not boundary
                continue
            # --- backward, and an optimizer step every `accum` batches
            if accum == 1:
                steps.backward(loss, 1.0, scaler)
            else:
                group = min(accum, n_batches - (batch_i - 1) // accum * accum)
                with distributed.no_sync(model, ddp_accum and not boundary):
                    steps.backward(loss, 1.0 / group, scaler)
            window.losses.append(loss.detach())
            if not boundary:
                continue
            window.norms.append(steps.optimizer_step(optimizer, params, clip, scaler))
            step += 1
            if step_scheduler is not None:
                step_scheduler.step()
            # --- bookkeeping: read the figures only at log intervals (one host sync each)
            checkpoint_due = ckpt_every and step % ckpt_every == 0
            if checkpoint_due or step % log_every == 0 or (solo and w.stop.count):
                state = window.read(state, w.stop, step, batch_i)
            if checkpoint_due:
                state = _save_last(w, state, mid_epoch=True)
            if on_step:
                state = evolve(state, step=step, batch=batch_i)
                for cb in on_step:
                    cb(Event.STEP_END, state)
        return window.read(state, w.stop, step, batch_i, epoch_end=True)
    except (RunEnded, UserError):
        raise
    except BaseException as exc:
        return _raised(exc, evolve(state, step=step, batch=batch_i))


def _raised(exc: BaseException, state: LoopState) -> LoopState:
    """Re-raise what ended an epoch, carrying the state it ended in."""
    if isinstance(exc, KeyboardInterrupt):
        exc.state = state
        raise exc
    if not isinstance(exc, Exception):
        raise exc
    raise RecipeRaised(str(exc), state) from exc


def _save_last(w: Wiring, state: LoopState, *, mid_epoch: bool) -> LoopState:
    for path in w.checkpointer.save_last(state, mid_epoch=mid_epoch):
        state = evolve(state, checkpoint_path=path)
        emit(w.table, Event.CHECKPOINT_WRITTEN, state)
    return state
