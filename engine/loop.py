"""fit(): the training loop, and only the loop.

    result = fit(recipe, cfg, run_dir="artifacts/models/ae/runs/x")
    result.best_val_loss, result.history["val_loss"], result.model

The loop reads top to bottom: set up, then per epoch train, validate, decide, checkpoint. Every
decision is a pure function of the state (`engine.state`); files, logs and progress bars are
written by callbacks that observe the decisions (`engine.callbacks`). Per step the loop keeps
the loss and gradient norm on the device and reads them only at log intervals and epoch ends,
so it adds no host sync to a hand-written loop.
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Any

import attrs
import torch

import steps
from engine import checkpoint as ckpt
from engine import distributed
from engine.book import Book, StopRequested, TrainingFailed, emit
from engine.building import best_weights_beside, build_objects, check_inputs, restore
from engine.devices import resolve_device
from engine.errors import UserError
from engine.events import Event, listeners
from engine.recipe import Recipe, StepContext
from engine.signals import StopRequest
from engine.state import (
    EpochTotals,
    LoopState,
    Run,
    record_validation,
    should_validate,
)


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


def fit(recipe: Recipe, cfg: Any, *, run_dir: str | Path | None = None, callbacks: tuple = (),
        resume: str | Path | None = None, name: str | None = None) -> RunResult:
    """Train `recipe` with `cfg`. With `run_dir`, write every file of a run there (created if
    missing); without, write nothing and keep the best weights in memory. `resume` names a
    checkpoint to continue from. `name` is the registry key (defaults to `recipe.name`)."""
    check_inputs(recipe, cfg)
    world = distributed.from_env()
    device = resolve_device(cfg.train.device, world.local_rank if world.active else None)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 needs a CUDA device", where='train.precision = "fp16"',
                        expected='"bf16" or "fp32" on this device', found=f"device {device}",
                        hint='use precision = "bf16" on CPU')
    world = distributed.init(world, device)
    try:
        # each rank's caller made its own run id: rank 0's names the run on every rank
        run_dir = distributed.from_main(run_dir, world)
        return _fit(recipe, cfg, world, device, run_dir, tuple(callbacks), resume,
                    name or recipe.name)
    finally:
        distributed.teardown(world)


def _fit(recipe, cfg, world, device, run_dir, extra_callbacks, resume, name) -> RunResult:
    from engine import callbacks as builtin
    from engine import preflight

    train = cfg.train
    # --- set up: everything a mistake can break happens before the run directory exists
    model, loaders, optimizer, schedule = build_objects(recipe, cfg, world, device)
    preflight.first_batch_check(recipe, cfg, model, loaders, device)
    train_model = distributed.wrap(model, world, device)
    if train.compile:
        train_model = torch.compile(train_model)
    run_id = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_id = run_dir.name
        if world.is_main:
            try:
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError("the run directory cannot be created", where=str(run_dir),
                                expected="a folder this user can write",
                                found=exc.strerror or str(exc)) from None
            if resume is not None:
                from engine.files import remove_temporaries
                remove_temporaries(run_dir)   # what a kill during a write left behind
    run = Run(recipe=recipe, cfg=cfg, model=model, train_model=train_model, optimizer=optimizer,
              schedule=schedule, scaler=steps.make_scaler(device, train.precision),
              loaders=loaders, device=device, run_dir=run_dir, run_id=run_id, name=name,
              rank=world.rank, world_size=world.world_size)
    state, resume_rng = LoopState(run=run), None
    if resume is not None:
        state, resume_rng = restore(run, resume)

    writers = builtin.standard(run) if (run_dir is not None and world.is_main) else ()
    table = listeners((*writers, *recipe.callbacks, *extra_callbacks))
    book = Book(run, world)
    if resume is not None:
        book.best_weights = best_weights_beside(resume, state)
    stop = StopRequest().install()
    ended = False
    try:
        state = _run_guarded(run, state, table, book, stop, world, resume_rng)
        if state.status == "running":
            state = attrs.evolve(state, status="completed")
        ended = True
        emit(table, Event.FIT_END, state)   # still under our handlers: a signal here is a flag
    except KeyboardInterrupt:
        # a second signal, even one landing while the first one's last.pt is written: stop
        # now; the files on disk are whole (atomic writes)
        if not ended:
            _emit_quietly(table, Event.FIT_END, attrs.evolve(book.state, status="interrupted"))
        raise
    finally:
        stop.restore()
    return _result(run, state, book)


def _run_guarded(run: Run, state: LoopState, table, book, stop, world, resume_rng) -> LoopState:
    """The epochs, with each way a run can end turned into its final state."""
    recipe = run.recipe
    try:
        emit(table, Event.FIT_START, state)
        return _epochs(run, state, table, book, stop, world, resume_rng)
    except StopRequested:
        state = attrs.evolve(book.state, status="interrupted")
        return book.save_last(state, mid_epoch=True, table=table)
    except TrainingFailed as failure:
        state = _failed(book.state, failure.epoch, failure.step, str(failure), None)
        emit(table, Event.FAILURE, state)
        return state
    except UserError:
        raise
    except Exception as exc:
        where = _recipe_function(exc, recipe)
        message = f"{where} raised {type(exc).__name__}: {exc}"
        if world.active and where.endswith("(called from the loop)"):
            # under torchrun a collective breaks here when another rank died: its own error is
            # on its stderr; say so rather than blame this rank's recipe
            message = (f"rank {world.rank}: a collective failed, most likely because another "
                       f"rank stopped (its error is in torchrun's output): "
                       f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")
        state = _failed(book.state, book.state.epoch, book.state.step, message,
                        "".join(traceback.format_exception(exc)))
        _emit_quietly(table, Event.FAILURE, state)
        _emit_quietly(table, Event.FIT_END, state)
        raise RecipeFailed(message, _result(run, state, book)) from exc


def _epochs(run: Run, state: LoopState, table, book, stop, world, resume_rng) -> LoopState:
    train = run.cfg.train
    if train.nan_policy == "rollback" and book.rollback_point is None:
        book.rollback_point = book.snapshot()   # before the first epoch ends: the start
    if resume_rng is not None and state.batch == 0:
        # restored here, after FIT_START's observers, so that they cannot shift the RNG
        ckpt.set_rng_state(resume_rng)
        resume_rng = None
    for epoch in range(state.epoch, train.epochs):
        # --- train one epoch (a resumed run may start inside it)
        mid_epoch = state.batch > 0
        if not mid_epoch:
            state = attrs.evolve(state, epoch=epoch, epoch_rng=ckpt.rng_state(),
                                 totals=EpochTotals(lr=run.optimizer.param_groups[0]["lr"]))
        book.state = state
        emit(table, Event.EPOCH_START, state)
        state = _train_epoch(run, state, table, book, stop, world,
                             resume_rng if mid_epoch else None)
        resume_rng = None
        # --- validate and decide
        totals = state.totals
        row = None
        if should_validate(epoch, train.epochs, train.validate_every_n_epochs):
            val = _validate(run, epoch, state.step, world)
            if not math.isfinite(val["val_loss"]):
                raise TrainingFailed(f"non-finite validation loss ({val['val_loss']}) after epoch "
                              f"{epoch + 1}", epoch, state.step)
            row = {"epoch": epoch, "train_loss": _mean(totals.loss_sum, totals.losses),
                   "val_loss": val.pop("val_loss"), "learning_rate": totals.lr,
                   "grad_norm": _mean(totals.norm_sum, totals.norms),
                   "clipped_fraction": (totals.clipped / totals.norms) if totals.norms else 0.0,
                   "nonfinite_steps": totals.nonfinite, **val}
            state = record_validation(state, row, train.early_stopping_min_delta,
                                      train.early_stopping_patience)
            if run.schedule is not None and run.schedule.interval == "validation":
                run.schedule.scheduler.step(row["val_loss"])
        if run.schedule is not None and run.schedule.interval == "epoch":
            run.schedule.scheduler.step()
        state = attrs.evolve(state, epoch=epoch + 1, batch=0, totals=EpochTotals())
        book.state = state
        # --- checkpoint, then tell the observers
        state = book.save_epoch_end(state, improved=row is not None and state.improved,
                                    table=table)
        if row is not None:
            emit(table, Event.VALIDATION_END, state)
        emit(table, Event.EPOCH_END, state)
        if state.status == "early_stopped":
            break
        # a stop that arrives during the last epoch's end leaves nothing to resume: completed
        if epoch + 1 < train.epochs and distributed.any_rank(stop.count > 0, world,
                                                             run.device):
            return attrs.evolve(state, status="interrupted")
    return state


def _train_epoch(run: Run, state: LoopState, table, book, stop, world, resume_rng) -> LoopState:
    train = run.cfg.train
    model, optimizer, scaler = run.train_model, run.optimizer, run.scaler
    forward_batch, device = run.recipe.forward_batch, run.device
    move = run.recipe.move_batch and device.type != "cpu"   # CPU tensors need no copy
    non_blocking = device.type == "cuda"
    accum, clip, log_every = train.grad_accum_steps, train.gradient_clip_value, \
        train.log_every_n_steps
    ckpt_every = train.checkpoint_every_n_steps
    check_each_step = train.nan_policy != "stop"   # skip/rollback: the user opted into a sync
    amp = train.precision != "fp32"
    ddp_accum = world.active and accum > 1
    step_scheduler = (run.schedule.scheduler if run.schedule is not None
                      and run.schedule.interval == "step" else None)
    on_step = table[Event.STEP_END]
    params = book.params
    loader = run.loaders.train
    n_batches = len(loader)
    epoch, step, batch_i = state.epoch, state.step, state.batch
    rank, size = run.rank, run.world_size
    solo = not world.active   # under DDP every rank must read at the same steps (collectives)

    distributed.set_epoch(loader, epoch)
    model.train()
    if resume_rng is not None:
        # the data order was drawn when the epoch's iterator started: replay it, then skip
        ckpt.set_rng_state(state.epoch_rng)
        batches = iter(loader)
        for _ in range(batch_i):
            next(batches)
        ckpt.set_rng_state(resume_rng)
    else:
        batches = iter(loader)
    book.window_start(state)
    dropping = False   # skip / rollback: the accumulation group holds a non-finite batch
    for batch in batches:
        if move:
            batch = steps.move_to_device(batch, device, non_blocking)
        ctx = StepContext(device, True, epoch, step, rank, size)
        if amp:
            with steps.autocast(device, train.precision):
                out = forward_batch(model, batch, ctx)
        else:
            out = forward_batch(model, batch, ctx)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        boundary = accum == 1 or (batch_i + 1) % accum == 0 or batch_i + 1 == n_batches
        batch_i += 1
        # skip / rollback: under DDP every rank skips together (a collective per step, in the
        # sync the user opted into), or the ranks' gradient reductions go out of step
        if check_each_step and distributed.any_rank(not torch.isfinite(loss), world, device):
            state = book.nonfinite_step(attrs.evolve(state, step=step, batch=batch_i), epoch)
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
        book.losses.append(loss.detach())
        if not boundary:
            continue
        book.norms.append(steps.optimizer_step(optimizer, params, clip, scaler))
        step += 1
        if step_scheduler is not None:
            step_scheduler.step()
        # --- read the figures only at log intervals (one host sync per interval)
        checkpoint_due = ckpt_every and step % ckpt_every == 0
        if checkpoint_due or step % log_every == 0 or (solo and stop.count):
            state = book.read(attrs.evolve(state, step=step, batch=batch_i), epoch, stop)
        if checkpoint_due:
            state = book.save_last(state, mid_epoch=True, table=table)
        if on_step:
            state = attrs.evolve(state, step=step, batch=batch_i)
            for cb in on_step:
                cb(Event.STEP_END, state)
    state = book.read(attrs.evolve(state, step=step, batch=batch_i), epoch, stop,
                      epoch_end=True)
    return state


def _validate(run: Run, epoch: int, step: int, world) -> dict:
    """Mean loss and metrics over all validation samples (across ranks), weighted by batch size."""
    # under DDP the plain module: DDP's forward may broadcast buffers (a collective), and the
    # ranks' validation shares may differ by a batch
    model, device = (run.model if world.active else run.train_model), run.device
    move = run.recipe.move_batch and device.type != "cpu"
    ctx = StepContext(device, False, epoch, step, run.rank, run.world_size)
    autocast = steps.autocast(device, run.cfg.train.precision)
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    model.eval()
    for batch in run.loaders.val:
        if move:
            batch = steps.move_to_device(batch, device, device.type == "cuda")
        n = steps.batch_size_of(batch)
        loss, metrics = steps.eval_step(model, batch, run.recipe.forward_batch, ctx, autocast)
        for key, value in (("val_loss", loss), *((f"val_{k}", v) for k, v in metrics.items())):
            value = value.detach().float().mean() * n
            totals[key] = totals[key] + value if key in totals else value
            counts[key] = counts.get(key, 0) + n
    model.train()
    keys = sorted(totals)
    sums = torch.stack([totals[k] for k in keys]).tolist()  # one host sync per validation
    figures = distributed.all_sum(sums + [float(counts[k]) for k in keys], world, device)
    return {k: figures[i] / figures[len(keys) + i] for i, k in enumerate(keys)}


class RecipeFailed(Exception):
    """Recipe code raised during training: the run ended with status `failed` (exit code 1)."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def _emit_quietly(table, event: Event, state: LoopState) -> None:
    """On the way out of a failure: a failing observer must not hide the first error."""
    for cb in table[event]:
        try:
            cb(event, state)
        except Exception:
            pass


def _failed(state: LoopState, epoch: int, step: int, message: str,
            trace: str | None) -> LoopState:
    error = {"epoch": epoch, "step": step, "message": message}
    if trace:
        error["traceback"] = trace
    return attrs.evolve(state, status="failed", error=error)


def _recipe_function(exc: BaseException, recipe: Recipe) -> str:
    """Name the recipe function an exception came from (the innermost one in the traceback)."""
    codes = {}
    for attr in ("forward_batch", "build_model", "build_loaders", "build_optimizer",
                 "build_scheduler"):
        code = getattr(getattr(recipe, attr, None), "__code__", None)
        if code is not None:
            codes[code] = attr
    name = None
    tb = exc.__traceback__
    while tb is not None:
        name = codes.get(tb.tb_frame.f_code, name)
        tb = tb.tb_next
    if name is not None:
        return f"recipe '{recipe.name}' {name}"
    module = getattr(recipe.forward_batch, "__module__", "")
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if module and module.replace(".", "/") in frame.filename.replace("\\", "/"):
            return f"recipe '{recipe.name}' {frame.name}"
    return f"recipe '{recipe.name}' (called from the loop)"


def _mean(total: float, n: int) -> float:
    return total / n if n else float("nan")


def _result(run: Run, state: LoopState, book: Book) -> RunResult:
    if book.best_weights is not None:
        run.model.load_state_dict(book.best_weights)
    return RunResult(
        history={k: list(v) for k, v in state.history.items()}, best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss, stopped_early=state.status == "early_stopped",
        status=state.status, run_dir=run.run_dir, model=run.model, run_id=run.run_id,
        error=({k: v for k, v in state.error.items() if k != "traceback"}
               if state.error else None), state=state)
