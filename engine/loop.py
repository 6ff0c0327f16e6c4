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

import copy
import inspect
import math
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import attrs
import torch

import steps
from engine import checkpoint as ckpt
from engine import distributed
from engine.devices import resolve_device
from engine.errors import UserError, describe_value
from engine.events import Event, listeners
from engine.recipe import Loaders, Recipe, Schedule, StepContext
from engine.signals import StopRequest
from engine.state import (
    EpochTotals,
    LoopState,
    Run,
    loop_state_dict,
    loop_state_from_dict,
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


class _Failed(Exception):
    """Training failed in a way the loop detected (a non-finite loss)."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class _Stopped(Exception):
    """A stop signal arrived; the loop stopped at a step boundary."""


def fit(recipe: Recipe, cfg: Any, *, run_dir: str | Path | None = None, callbacks: tuple = (),
        resume: str | Path | None = None, name: str | None = None) -> RunResult:
    """Train `recipe` with `cfg`. With `run_dir`, write every file of a run there (created if
    missing); without, write nothing and keep the best weights in memory. `resume` names a
    checkpoint to continue from. `name` is the registry key (defaults to `recipe.name`)."""
    _check_inputs(recipe, cfg)
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
    _seed_everything(train.seed)
    model = _call(recipe, "build_model", cfg)
    if not isinstance(model, torch.nn.Module):
        raise UserError("build_model did not return a torch.nn.Module", where=_where(recipe,
                        "build_model"), expected="an nn.Module", found=describe_value(model))
    loaders = _call(recipe, "build_loaders", cfg)
    loaders = _prepare_loaders(recipe, loaders, world, device, train.seed)
    model.to(device)
    optimizer = _call(recipe, "build_optimizer", cfg, model)
    steps_per_epoch = math.ceil(len(loaders.train) / train.grad_accum_steps)
    schedule = _build_schedule(recipe, cfg, optimizer, steps_per_epoch)
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
        state, resume_rng = _restore(run, resume)

    writers = builtin.standard(run) if (run_dir is not None and world.is_main) else ()
    table = listeners((*writers, *recipe.callbacks, *extra_callbacks))
    book = _Book(run, world)
    if resume is not None:
        book.best_weights = _best_weights_beside(resume, state)
    stop = StopRequest().install()
    try:
        _emit(table, Event.FIT_START, state)
        state = _epochs(run, state, table, book, stop, world, resume_rng)
    except _Stopped:
        state = attrs.evolve(book.state, status="interrupted")
        state = book.save_last(state, mid_epoch=True, table=table)
    except _Failed as failure:
        state = _failed(book.state, failure.epoch, failure.step, str(failure), None)
        _emit(table, Event.FAILURE, state)
    except KeyboardInterrupt:
        # a second signal: stop now; files on disk are whole (atomic writes)
        state = attrs.evolve(book.state, status="interrupted")
        _emit_quietly(table, Event.FIT_END, state)
        raise
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
    finally:
        stop.restore()
    if state.status == "running":
        state = attrs.evolve(state, status="completed")
    _emit(table, Event.FIT_END, state)
    return _result(run, state, book)


def _epochs(run: Run, state: LoopState, table, book, stop, world, resume_rng) -> LoopState:
    train = run.cfg.train
    if train.nan_policy == "rollback" and book.rollback_point is None:
        book.rollback_point = book._snapshot()   # before the first epoch ends: the start
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
        _emit(table, Event.EPOCH_START, state)
        state = _train_epoch(run, state, table, book, stop, world,
                             resume_rng if mid_epoch else None)
        resume_rng = None
        # --- validate and decide
        totals = state.totals
        row = None
        if should_validate(epoch, train.epochs, train.validate_every_n_epochs):
            val = _validate(run, epoch, state.step, world)
            if not math.isfinite(val["val_loss"]):
                raise _Failed(f"non-finite validation loss ({val['val_loss']}) after epoch "
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
            _emit(table, Event.VALIDATION_END, state)
        _emit(table, Event.EPOCH_END, state)
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
        if step % log_every == 0 or (solo and stop.count):
            state = book.read(attrs.evolve(state, step=step, batch=batch_i), epoch, stop)
        if ckpt_every and step % ckpt_every == 0:
            state = book.read(attrs.evolve(state, step=step, batch=batch_i), epoch, stop)
            state = book.save_last(state, mid_epoch=True, table=table)
        if on_step:
            state = attrs.evolve(state, step=step, batch=batch_i)
            for cb in on_step:
                cb(Event.STEP_END, state)
    state = book.read(attrs.evolve(state, step=step, batch=batch_i), epoch, stop,
                      epoch_end=True)
    return state


class _Book:
    """The loop's bookkeeping between host syncs: the device-side loss and gradient-norm
    windows, the latest state (for failure reports) and checkpoint writing."""

    def __init__(self, run: Run, world) -> None:
        self.run, self.world = run, world
        self.params = [p for g in run.optimizer.param_groups for p in g["params"]]
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.state = LoopState(run=run)
        self.best_weights: dict | None = None
        self.rollback_point: dict | None = None

    def window_start(self, state: LoopState) -> None:
        self.losses.clear()
        self.norms.clear()
        self.state = state

    def read(self, state: LoopState, epoch: int, stop: StopRequest,
             epoch_end: bool = False) -> LoopState:
        """Move the window's figures to the host, add them to the epoch totals, and act on a
        non-finite loss or a stop request."""
        train = self.run.cfg.train
        losses = torch.stack(self.losses).tolist() if self.losses else []
        norms = torch.stack(self.norms).float().tolist() if self.norms else []
        first = state.step - len(norms)
        self.losses.clear()
        self.norms.clear()
        t = state.totals
        loss_sum, bad_at = t.loss_sum, None
        for i, value in enumerate(losses):
            if bad_at is None and not math.isfinite(value):
                bad_at = i
            loss_sum += value
        norm_sum, clipped = t.norm_sum, t.clipped
        clip = train.gradient_clip_value
        for value in norms:
            norm_sum += value
            clipped += clip > 0 and value > clip
        n_losses = len(losses)
        recent = sum(losses) / len(losses) if losses else state.recent_loss
        flags = distributed.all_sum([float(bad_at is not None),
                                     float(stop.count > 0 and not epoch_end),
                                     sum(losses), float(n_losses)],
                                    self.world, self.run.device)
        if self.world.active:
            # every rank records the mean over all ranks' batches: the window's losses are
            # summed in the same collective as the flags
            loss_sum, n_losses = t.loss_sum + flags[2], int(flags[3])
            recent = flags[2] / flags[3] if flags[3] else state.recent_loss
        totals = attrs.evolve(t, loss_sum=loss_sum, losses=t.losses + n_losses,
                              norm_sum=norm_sum, norms=t.norms + len(norms), clipped=clipped)
        state = attrs.evolve(state, totals=totals, recent_loss=recent)
        self.state = state
        if flags[0]:
            accum = train.grad_accum_steps
            at = first + (bad_at // accum if bad_at is not None else 0)
            raise _Failed(f"non-finite training loss at epoch {epoch + 1}, step {at + 1}",
                          epoch, at)
        if flags[1]:
            raise _Stopped()
        return state

    def nonfinite_step(self, state: LoopState, epoch: int) -> LoopState:
        """skip / rollback: drop this batch's update (rollback: reload the last checkpoint)."""
        run, step = self.run, state.step
        train = run.cfg.train
        run.optimizer.zero_grad(set_to_none=True)
        totals = state.totals
        state = attrs.evolve(state, skipped_steps=state.skipped_steps + 1,
                             totals=attrs.evolve(totals, nonfinite=totals.nonfinite + 1))
        self.state = state
        if state.skipped_steps > train.max_skipped_steps:
            raise _Failed(f"non-finite training loss at epoch {epoch + 1}, step {step + 1}: "
                          f"{state.skipped_steps} non-finite steps, more than "
                          f"train.max_skipped_steps = {train.max_skipped_steps}", epoch, step)
        if train.nan_policy == "rollback":
            _load_objects(run, self.rollback_point)
        return state

    def _snapshot(self) -> dict:
        run = self.run
        return copy.deepcopy({
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.schedule.scheduler.state_dict() if run.schedule else None,
            "scaler": run.scaler.state_dict() if run.scaler else None})

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, state: LoopState, *, mid_epoch: bool) -> dict:
        from engine.config import to_dict
        run = self.run
        loop = loop_state_dict(state)
        loop["totals"] = attrs.asdict(state.totals) if mid_epoch else None
        return {
            "format": ckpt.FORMAT, "recipe": run.name, "config": to_dict(run.cfg),
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.schedule.scheduler.state_dict() if run.schedule else None,
            "scaler": run.scaler.state_dict() if run.scaler else None,
            "loop": loop, "rng": ckpt.rng_state(),
            "epoch_rng": state.epoch_rng if mid_epoch else None,
            "world_size": run.world_size,
        }

    def save_last(self, state: LoopState, *, mid_epoch: bool, table) -> LoopState:
        run = self.run
        if run.run_dir is None or not self.world.is_main:
            return state
        path = run.run_dir / "checkpoints" / "last.pt"
        ckpt.save(path, self.checkpoint(state, mid_epoch=mid_epoch))
        state = attrs.evolve(state, checkpoint_path=str(path))
        _emit(table, Event.CHECKPOINT_WRITTEN, state)
        return state

    def save_epoch_end(self, state: LoopState, *, improved: bool, table) -> LoopState:
        """best.pt and model.pt when the validation improved, then last.pt (and keep_last)."""
        run, train = self.run, self.run.cfg.train
        if improved:
            self.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if train.nan_policy == "rollback":
            self.rollback_point = self._snapshot()
        if run.run_dir is None or not self.world.is_main:
            return state
        data = ckpt.to_bytes(self.checkpoint(state, mid_epoch=False))
        folder = run.run_dir / "checkpoints"
        if improved:
            ckpt.save(folder / "best.pt", data)
            from engine.files import atomic_torch_save
            atomic_torch_save(run.run_dir / "model.pt", run.model.state_dict())
            _emit(table, Event.CHECKPOINT_WRITTEN,
                  attrs.evolve(state, checkpoint_path=str(folder / "best.pt")))
        ckpt.save(folder / "last.pt", data)
        if train.keep_last:
            ckpt.save(folder / f"epoch-{state.epoch:04d}.pt", data)
            # from the folder, not from memory: a resumed run counts the files written before
            for old in ckpt.epoch_files(folder)[:-train.keep_last]:
                old.unlink(missing_ok=True)
        state = attrs.evolve(state, checkpoint_path=str(folder / "last.pt"))
        _emit(table, Event.CHECKPOINT_WRITTEN, state)
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


# --- helpers -----------------------------------------------------------------------------------

class RecipeFailed(Exception):
    """Recipe code raised during training: the run ended with status `failed` (exit code 1)."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def _check_inputs(recipe: Any, cfg: Any) -> None:
    if not isinstance(recipe, Recipe):
        raise UserError("fit needs a Recipe", where="fit(recipe, ...)",
                        expected="an engine.Recipe", found=describe_value(recipe))
    if not isinstance(cfg, recipe.config):
        raise UserError("the config does not belong to the recipe", where="fit(..., cfg)",
                        expected=f"an instance of {recipe.config.__name__}",
                        found=describe_value(cfg))
    if not hasattr(cfg, "train"):
        raise UserError("the recipe's config has no train table", where=recipe.config.__name__,
                        expected="a field `train: TrainConfig`", found="no such field")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


def _where(recipe: Recipe, attr: str) -> str:
    fn = getattr(recipe, attr)
    module = getattr(fn, "__module__", "?")
    return f"recipe '{recipe.name}' {attr} ({module}.{getattr(fn, '__qualname__', fn)})"


def _call(recipe: Recipe, attr: str, *args: Any) -> Any:
    """Call a recipe builder; an exception in it is the recipe's mistake (exit code 2)."""
    try:
        return getattr(recipe, attr)(*args)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{attr} raised {type(exc).__name__}", where=_where(recipe, attr),
                        expected=f"{attr} to build from the config",
                        found=f"{type(exc).__name__}: {exc}") from exc


def _build_schedule(recipe: Recipe, cfg: Any, optimizer, steps_per_epoch: int) -> Any:
    build = recipe.build_scheduler
    if build is None:
        return None
    try:
        takes_steps = "steps_per_epoch" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        takes_steps = False
    extra = (steps_per_epoch,) if takes_steps else ()
    schedule = _call(recipe, "build_scheduler", cfg, optimizer, *extra)
    if not isinstance(schedule, Schedule):
        raise UserError("build_scheduler did not return a Schedule", where=_where(
            recipe, "build_scheduler"), expected='Schedule(scheduler, interval="step"|"epoch"|'
            '"validation")', found=describe_value(schedule))
    return schedule


def _prepare_loaders(recipe: Recipe, loaders: Any, world, device, seed: int) -> Loaders:
    if not (hasattr(loaders, "train") and hasattr(loaders, "val")):
        raise UserError("build_loaders did not return Loaders", where=_where(
            recipe, "build_loaders"), expected="Loaders(train=DataLoader, val=DataLoader)",
            found=describe_value(loaders))
    train, val = loaders.train, loaders.val
    for which, loader in (("training", train), ("validation", val)):
        try:
            size = len(loader)
        except TypeError:
            raise UserError(f"the {which} loader has no length", where=_where(
                recipe, "build_loaders"), expected="a DataLoader over a sized dataset",
                found=describe_value(loader)) from None
        if size == 0:
            dataset = getattr(loader, "dataset", None)
            n = len(dataset) if hasattr(dataset, "__len__") else "?"
            raise UserError(f"the {which} loader is empty", where=_where(recipe, "build_loaders"),
                            expected="at least one batch",
                            found=f"0 batches ({n} samples, batch_size "
                                  f"{getattr(loader, 'batch_size', '?')}, drop_last "
                                  f"{getattr(loader, 'drop_last', '?')})")
    train = distributed.shard(train, world, seed, "train")
    val = distributed.shard(val, world, seed, "val")
    if device.type == "cuda" and recipe.move_batch:
        # pinned host memory lets the copy to the GPU overlap with compute (non_blocking)
        train = distributed.rebuild_loader(train, pin_memory=True)
        val = distributed.rebuild_loader(val, pin_memory=True, which="val")
    return Loaders(train=train, val=val)


def _restore(run: Run, path: str | Path) -> tuple[LoopState, Any]:
    data = ckpt.load(path)
    ckpt.check_matches(data, path, run.name, run.model)
    _load_objects(run, data)
    state = loop_state_from_dict(data["loop"], run)
    totals = data["loop"].get("totals")
    state = attrs.evolve(state, totals=EpochTotals(**totals) if totals else EpochTotals(),
                         epoch_rng=data.get("epoch_rng"))
    return state, data["rng"]


def _best_weights_beside(path: str | Path, state: LoopState) -> dict | None:
    """A resumed run's best weights so far, from the best.pt beside its checkpoint, so that the
    returned model is the best one even when the resume never improves on it."""
    best = Path(path).with_name("best.pt")
    if state.best_epoch is None or not best.is_file():
        return None
    data = ckpt.load(best)
    if (data.get("loop") or {}).get("best_epoch") != state.best_epoch:
        return None
    return data["model"]


def _load_objects(run: Run, data: dict) -> None:
    run.model.load_state_dict(data["model"])
    run.optimizer.load_state_dict(data["optimizer"])
    if run.schedule is not None and data.get("scheduler") is not None:
        run.schedule.scheduler.load_state_dict(data["scheduler"])
    if run.scaler is not None and data.get("scaler") is not None:
        run.scaler.load_state_dict(data["scaler"])


def _emit(table, event: Event, state: LoopState) -> None:
    for cb in table[event]:
        cb(event, state)


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


def _result(run: Run, state: LoopState, book: _Book) -> RunResult:
    if book.best_weights is not None:
        run.model.load_state_dict(book.best_weights)
    return RunResult(
        history={k: list(v) for k, v in state.history.items()}, best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss, stopped_early=state.status == "early_stopped",
        status=state.status, run_dir=run.run_dir, model=run.model, run_id=run.run_id,
        error=({k: v for k, v in state.error.items() if k != "traceback"}
               if state.error else None), state=state)
