"""The loop's bookkeeping between host syncs: the device-side windows of losses and gradient
norms read at log intervals, the decisions that need them (non-finite loss, stop request), and
the checkpoints the loop writes (last.pt, best.pt, model.pt, keep_last)."""

from __future__ import annotations

import copy
import math
from typing import Any

import attrs
import torch

from engine import checkpoint as ckpt
from engine import distributed
from engine.events import Event
from engine.signals import StopRequest
from engine.state import LoopState, Run, loop_state_dict


class TrainingFailed(Exception):
    """Training failed in a way the loop detected (a non-finite loss)."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class StopRequested(Exception):
    """A stop signal arrived; the loop stopped at a step boundary."""


class Book:
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
            raise TrainingFailed(f"non-finite training loss at epoch {epoch + 1}, step {at + 1}",
                          epoch, at)
        if flags[1]:
            raise StopRequested()
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
            raise TrainingFailed(f"non-finite training loss at epoch {epoch + 1}, step {step + 1}: "
                          f"{state.skipped_steps} non-finite steps, more than "
                          f"train.max_skipped_steps = {train.max_skipped_steps}", epoch, step)
        if train.nan_policy == "rollback":
            load_objects(run, self.rollback_point)
        return state

    def snapshot(self) -> dict:
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
        emit(table, Event.CHECKPOINT_WRITTEN, state)
        return state

    def save_epoch_end(self, state: LoopState, *, improved: bool, table) -> LoopState:
        """best.pt and model.pt when the validation improved, then last.pt (and keep_last)."""
        run, train = self.run, self.run.cfg.train
        if improved:
            self.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if train.nan_policy == "rollback":
            self.rollback_point = self.snapshot()
        if run.run_dir is None or not self.world.is_main:
            return state
        data = ckpt.to_bytes(self.checkpoint(state, mid_epoch=False))
        folder = run.run_dir / "checkpoints"
        if improved:
            ckpt.save(folder / "best.pt", data)
            from engine.files import atomic_torch_save
            atomic_torch_save(run.run_dir / "model.pt", run.model.state_dict())
            emit(table, Event.CHECKPOINT_WRITTEN,
                  attrs.evolve(state, checkpoint_path=str(folder / "best.pt")))
        ckpt.save(folder / "last.pt", data)
        if train.keep_last:
            ckpt.save(folder / f"epoch-{state.epoch:04d}.pt", data)
            # from the folder, not from memory: a resumed run counts the files written before
            for old in ckpt.epoch_files(folder)[:-train.keep_last]:
                old.unlink(missing_ok=True)
        state = attrs.evolve(state, checkpoint_path=str(folder / "last.pt"))
        emit(table, Event.CHECKPOINT_WRITTEN, state)
        return state


def emit(table: Any, event: Event, state: LoopState) -> None:
    """Send `event` to its listeners (a table from `engine.events.listeners`)."""
    for cb in table[event]:
        cb(event, state)


def load_objects(run: Run, data: dict) -> None:
    """Load model, optimizer, scheduler and scaler state from a checkpoint dict."""
    run.model.load_state_dict(data["model"])
    run.optimizer.load_state_dict(data["optimizer"])
    if run.schedule is not None and data.get("scheduler") is not None:
        run.schedule.scheduler.load_state_dict(data["scheduler"])
    if run.scaler is not None and data.get("scaler") is not None:
        run.scaler.load_state_dict(data["scaler"])
