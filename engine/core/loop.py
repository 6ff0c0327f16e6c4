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
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import torch

import steps
from engine.core import distributed, rng
from engine.core.building import recipe_function
from engine.core.errors import UserError
from engine.core.events import Event, emit, emit_quietly
from engine.core.failures import RecipeRaised, RunEnded, StopRequested, TrainingFailed
from engine.core.nonfinite import Rollback, drop_step
from engine.core.recipe import StepContext
from engine.core.state import EpochTotals, LoopState, Run, record_validation, should_validate
from engine.core.validation import history_row, validate
from engine.core.window import FigureWindow


class Checkpointer(Protocol):
    """Writes a run's checkpoints; each method returns the paths it wrote (best first)."""

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]: ...

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]: ...


class NoCheckpoints:
    """The checkpointer of a run without a run directory: writes nothing."""

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]:
        return []

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]:
        return []


@attrs.frozen
class Wiring:
    """What one run's loop is connected to: its objects, the observers (a table from
    `engine.core.events.listeners`), the checkpointer, the stop flag, and `stop_when`, a
    predicate asked after each validation: a status it returns (a study's "pruned") ends the
    run after that epoch's checkpoint."""

    run: Run
    world: Any
    table: dict
    checkpointer: Any = attrs.field(factory=NoCheckpoints)
    stop: Any = None
    stop_when: Callable[[LoopState], str | None] | None = None
    window: FigureWindow = attrs.field(init=False)
    rollback: Rollback = attrs.field(init=False, factory=Rollback)

    @window.default
    def _window(self) -> FigureWindow:
        train = self.run.cfg.train
        return FigureWindow(self.world, self.run.device, train.gradient_clip_value,
                            train.grad_accum_steps)


def run_loop(w: Wiring, state: LoopState, resume_rng: Any = None) -> LoopState:
    """Run the epochs from `state`, with each way a run can end turned into its final state:
    completed / early_stopped / a `stop_when` status, interrupted (a signal: last.pt written),
    failed (a non-finite loss). Recipe code that raises ends it as RecipeRaised, carrying the
    failed state, after FAILURE and FIT_END reached the observers."""
    try:
        state = _ended(w, state, resume_rng)
    except KeyboardInterrupt as exc:
        # a second signal, even one landing while the first one's last.pt is written: stop
        # now; the files on disk are whole (atomic writes)
        emit_quietly(w.table, Event.FIT_END,
                     attrs.evolve(getattr(exc, "state", state), status="interrupted"))
        raise
    if state.status == "running":
        state = attrs.evolve(state, status="completed")
    emit(w.table, Event.FIT_END, state)
    return state


def _ended(w: Wiring, state: LoopState, resume_rng: Any) -> LoopState:
    """The epochs, and the state each way of ending them leaves."""
    try:
        return _epochs(w, state, resume_rng)
    except StopRequested as stopped:
        state = attrs.evolve(stopped.state, status="interrupted")
        try:
            return _save_last(w, state, mid_epoch=True)
        except KeyboardInterrupt as exc:   # a second signal during the write
            exc.state = state
            raise
    except TrainingFailed as failure:
        state = _failed(failure.state, failure.epoch, failure.step, str(failure), None)
        emit(w.table, Event.FAILURE, state)
        return state
    except RecipeRaised as raised:
        cause = raised.__cause__ or raised
        message = _blame(cause, w)
        state = _failed(raised.state, raised.state.epoch, raised.state.step, message,
                        "".join(traceback.format_exception(cause)))
        emit_quietly(w.table, Event.FAILURE, state)
        emit_quietly(w.table, Event.FIT_END, state)
        raise RecipeRaised(message, state) from cause


def _epochs(w: Wiring, state: LoopState, resume_rng: Any) -> LoopState:
    run, train = w.run, w.run.cfg.train
    try:
        emit(w.table, Event.FIT_START, state)
        if train.nan_policy == "rollback" and w.rollback.point is None:
            w.rollback.take(run)   # before the first epoch ends: the start
        if resume_rng is not None and state.batch == 0:
            # restored here, after FIT_START's observers, so that they cannot shift the RNG
            rng.set_rng_state(resume_rng)
            resume_rng = None
        for epoch in range(state.epoch, train.epochs):
            # --- train one epoch (a resumed run may start inside it)
            if state.batch == 0:
                state = attrs.evolve(state, epoch=epoch, epoch_rng=rng.rng_state(), totals=
                                     EpochTotals(lr=run.optimizer.param_groups[0]["lr"]))
            emit(w.table, Event.EPOCH_START, state)
            state = _train_epoch(w, state, resume_rng)
            resume_rng = None
            # --- validate and decide
            validated = should_validate(epoch, train.epochs, train.validate_every_n_epochs)
            if validated:
                state = _validate(w, state)
            if run.schedule is not None and run.schedule.interval == "epoch":
                run.schedule.scheduler.step()
            improved = validated and state.improved
            if improved:
                state = attrs.evolve(state, best_weights={
                    k: v.detach().clone() for k, v in run.model.state_dict().items()})
            if validated and w.stop_when is not None and state.status == "running":
                state = attrs.evolve(state, status=w.stop_when(state) or "running")
            state = attrs.evolve(state, epoch=epoch + 1, batch=0, totals=EpochTotals())
            # --- checkpoint, then tell the observers
            if train.nan_policy == "rollback":
                w.rollback.take(run)
            for path in w.checkpointer.save_epoch_end(state, improved=improved):
                state = attrs.evolve(state, checkpoint_path=path)
                emit(w.table, Event.CHECKPOINT_WRITTEN, state)
            if validated:
                emit(w.table, Event.VALIDATION_END, state)
            emit(w.table, Event.EPOCH_END, state)
            if state.status != "running":
                break
            # a stop that arrives during the last epoch's end leaves nothing to resume
            if epoch + 1 < train.epochs and distributed.any_rank(
                    w.stop.count > 0, w.world, run.device):
                return attrs.evolve(state, status="interrupted")
        return state
    except (RunEnded, UserError):
        raise
    except KeyboardInterrupt as exc:
        exc.state = getattr(exc, "state", state)
        raise
    except Exception as exc:
        raise RecipeRaised(str(exc), state) from exc


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


def _train_epoch(w: Wiring, state: LoopState, resume_rng: Any) -> LoopState:
    run, world, window, train = w.run, w.world, w.window, w.run.cfg.train
    model, optimizer, scaler = run.train_model, run.optimizer, run.scaler
    forward_batch, device = run.recipe.forward_batch, run.device
    move = run.recipe.move_batch and device.type != "cpu"   # CPU tensors need no copy
    non_blocking = device.type == "cuda"
    accum, clip, log_every = train.grad_accum_steps, train.gradient_clip_value, \
        train.log_every_n_steps
    ckpt_every = train.checkpoint_every_n_steps
    check_each_step = train.nan_policy != "stop"   # skip/rollback: the user opted into a sync
    autocast = steps.autocast(device, train.precision) if train.precision != "fp32" else None
    ddp_accum = world.active and accum > 1
    step_scheduler = (run.schedule.scheduler if run.schedule is not None
                      and run.schedule.interval == "step" else None)
    on_step = w.table[Event.STEP_END]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    n_batches = len(run.loaders.train)
    epoch, step, batch_i = state.epoch, state.step, state.batch
    solo = not world.active   # under DDP every rank must read at the same steps (collectives)
    batches = _epoch_batches(run, state, resume_rng)
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
            # skip / rollback: under DDP every rank skips together (a collective per step, in
            # the sync the user opted into), or the ranks' gradient reductions go out of step
            if check_each_step and distributed.any_rank(not torch.isfinite(loss), world,
                                                        device):
                state = drop_step(run, attrs.evolve(state, step=step, batch=batch_i),
                                  w.rollback)
                dropping = not boundary   # the rest of this accumulation group goes with it
                continue
            if dropping:
                # a group with a non-finite batch makes no update at all: the other batches'
                # gradients alone would be an update scaled for a larger group
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
                state = window.read(attrs.evolve(state, step=step, batch=batch_i), w.stop)
            if checkpoint_due:
                state = _save_last(w, state, mid_epoch=True)
            if on_step:
                state = attrs.evolve(state, step=step, batch=batch_i)
                for cb in on_step:
                    cb(Event.STEP_END, state)
        return window.read(attrs.evolve(state, step=step, batch=batch_i), w.stop,
                           epoch_end=True)
    except (RunEnded, UserError):
        raise
    except KeyboardInterrupt as exc:
        exc.state = attrs.evolve(state, step=step, batch=batch_i)
        raise
    except Exception as exc:
        raise RecipeRaised(str(exc), attrs.evolve(state, step=step, batch=batch_i)) from exc


def _epoch_batches(run: Run, state: LoopState, resume_rng: Any) -> Any:
    """The epoch's batch iterator; a run resumed mid-epoch replays the epoch's data order from
    the RNG state at its start, skips the batches already trained, then restores the RNG."""
    loader = run.loaders.train
    distributed.set_epoch(loader, state.epoch)
    run.train_model.train()
    if resume_rng is None:
        return iter(loader)
    rng.set_rng_state(state.epoch_rng)
    batches = iter(loader)
    for _ in range(state.batch):
        next(batches)
    rng.set_rng_state(resume_rng)
    return batches


def _save_last(w: Wiring, state: LoopState, *, mid_epoch: bool) -> LoopState:
    for path in w.checkpointer.save_last(state, mid_epoch=mid_epoch):
        state = attrs.evolve(state, checkpoint_path=path)
        emit(w.table, Event.CHECKPOINT_WRITTEN, state)
    return state


def _failed(state: LoopState, epoch: int, step: int, message: str,
            trace: str | None) -> LoopState:
    error = {"epoch": epoch, "step": step, "message": message}
    if trace:
        error["traceback"] = trace
    return attrs.evolve(state, status="failed", error=error)


def _blame(exc: BaseException, w: Wiring) -> str:
    where = recipe_function(exc, w.run.recipe)
    if w.world.active and where.endswith("(called from the loop)"):
        # under torchrun a collective breaks here when another rank died: its own error is on
        # its stderr; say so rather than blame this rank's recipe
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return (f"rank {w.world.rank}: a collective failed, most likely because another rank "
                f"stopped (its error is in torchrun's output): {type(exc).__name__}: {first}")
    return f"{where} raised {type(exc).__name__}: {exc}"
