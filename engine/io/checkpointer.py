"""The run directory's checkpointer: what `fit` hands the loop when it has a run directory.

    checkpoints/last.pt   after every epoch (and every `checkpoint_every_n_steps` steps)
    checkpoints/best.pt   when a validation is the new best, and `model.pt` (plain weights)
    checkpoints/epoch-NNNN.pt  the last `keep_last` epochs

Each file is written whole or not at all (engine.io.files); only rank 0 writes.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import attrs
import torch

from engine.core import rng
from engine.core.config import to_dict
from engine.core.failures import TrainingFailed
from engine.core.state import LoopState, Run, loop_state_dict
from engine.io import checkpoint as ckpt
from engine.io.files import atomic_torch_save


def checkpoint_dict(run: Run, state: LoopState, *, mid_epoch: bool) -> dict:
    """Everything a resume needs, as tensors and plain values (weights_only loads it)."""
    loop = loop_state_dict(state)
    loop["totals"] = attrs.asdict(state.totals) if mid_epoch else None
    return {
        "format": ckpt.FORMAT, "recipe": run.name, "config": to_dict(run.cfg),
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.scheduler.state_dict() if run.schedule else None,
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "loop": loop, "rng": rng.rng_state(),
        "epoch_rng": state.epoch_rng if mid_epoch else None,
        "world_size": run.world_size,
    }


def _safe_to_load(data: bytes, path: Path, state: LoopState) -> None:
    """The run's first checkpoint must load back the way a resume loads it (weights_only):
    an optimizer or scheduler whose state holds an object would otherwise write checkpoints
    its own resume refuses. Checked once per run, before the file is written."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or ["unpickling failed"])[0][:300]
        raise TrainingFailed(
            f"the checkpoint {path} would not load with torch.load(weights_only=True), so the "
            f"run could never be resumed: {first} (an optimizer, scheduler or scaler state "
            f"holding a Python object; keep their state to tensors and plain values)",
            state, state.epoch, state.step) from None


class RunDirCheckpointer:
    """Writes last.pt, best.pt, model.pt and keep_last files under `run.run_dir`; returns
    the paths written, best first (the loop tells observers of each). A write that fails
    (a full disk, a folder removed) ends the run as failed, naming the path and the OS error;
    every file written before stays whole (atomic writes)."""

    def __init__(self, run: Run, is_main: bool) -> None:
        self.run, self.is_main = run, is_main
        self.folder = run.run_dir / "checkpoints"
        self.checked = False

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]:
        """checkpoints/last.pt now (a stop signal, or checkpoint_every_n_steps)."""
        if not self.is_main:
            return []
        path = self.folder / "last.pt"
        data = self._serialized(state, mid_epoch, path)
        self._write(state, path, lambda: ckpt.save(path, data))
        return [str(path)]

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]:
        """best.pt and model.pt when the validation improved, then last.pt (and keep_last)."""
        if not self.is_main:
            return []
        written: list[str] = []
        data = self._serialized(state, False, self.folder / "last.pt")
        try:
            self._save_epoch_files(state, data, improved, written)
        except OSError as exc:
            raise self._failure(state, exc, epoch_end=True) from None
        return written

    def _save_epoch_files(self, state: LoopState, data: bytes, improved: bool,
                          written: list[str]) -> None:
        run, keep_last = self.run, self.run.cfg.train.keep_last
        if improved:
            ckpt.save(self.folder / "best.pt", data)
            atomic_torch_save(run.run_dir / "model.pt", run.model.state_dict())
            written.append(str(self.folder / "best.pt"))
        ckpt.save(self.folder / "last.pt", data)
        if keep_last:
            ckpt.save(self.folder / f"epoch-{state.epoch:04d}.pt", data)
            # from the folder, not from memory: a resumed run counts the files written before
            for old in ckpt.epoch_files(self.folder)[:-keep_last]:
                old.unlink(missing_ok=True)
        written.append(str(self.folder / "last.pt"))

    def _serialized(self, state: LoopState, mid_epoch: bool, path: Path) -> bytes:
        data = ckpt.to_bytes(checkpoint_dict(self.run, state, mid_epoch=mid_epoch))
        if not self.checked:
            _safe_to_load(data, path, state)
            self.checked = True
        return data

    def _write(self, state: LoopState, path: Path, write: Any) -> None:
        try:
            write()
        except OSError as exc:
            raise self._failure(state, exc, epoch_end=False) from None

    def _failure(self, state: LoopState, exc: OSError, epoch_end: bool) -> TrainingFailed:
        # at an epoch's end the state has moved on to the next epoch: blame the one just done
        epoch = state.epoch - 1 if epoch_end else state.epoch
        where = exc.filename or self.folder
        return TrainingFailed(f"a checkpoint could not be written: {where}: "
                              f"{exc.strerror or exc}", state, epoch, max(state.step - 1, 0))

    def close(self) -> None:
        """Nothing pending: every write above returned once its file was in place."""
