"""The run directory's checkpointer: what `fit` hands the loop when it has a run directory.

    checkpoints/last.pt   after every epoch (and every `checkpoint_every_n_steps` steps)
    checkpoints/best.pt   when a validation is the new best, and `model.pt` (plain weights)
    checkpoints/epoch-NNNN.pt  the last `keep_last` epochs

Each file is written whole or not at all (engine.io.files); only rank 0 writes.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import attrs
import torch

from engine.core import rng
from engine.core.config import to_dict
from engine.core.failures import TrainingFailed
from engine.core.state import LoopState, Run, loop_state_dict
from engine.io import checkpoint as ckpt
from engine.io.file_writer import failure_message
from engine.io.files import atomic_write_shared


def checkpoint_dict(run: Run, state: LoopState, *, mid_epoch: bool, config: dict) -> dict:
    """Everything a resume needs, as tensors and plain values (weights_only loads it).
    `config` is `to_dict(run.cfg)`, made once per run (the config is frozen)."""
    loop = loop_state_dict(state)
    loop["totals"] = attrs.asdict(state.totals) if mid_epoch else None
    return {
        "format": ckpt.FORMAT, "recipe": run.name,
        "config": config,
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.scheduler.state_dict() if run.schedule else None,
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "loop": loop, "rng": rng.rng_state(),
        "epoch_rng": state.epoch_rng if mid_epoch else None,
        "world_size": run.world_size,
    }


_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def _plainly_safe(value: object, depth: int = 0) -> bool:
    """Whether `value` holds nothing but what weights_only loads for certain (plain values,
    containers of them, plain tensors): then the check by loading is not needed. Anything else
    (a tensor subclass, an object, a set) is left to torch.load to judge."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is torch.Tensor:
        return value.layout is torch.strided and not value.is_quantized and not value.is_nested
    if depth > 30:
        return False
    if kind is dict or kind is OrderedDict:
        return all(type(k) in _PLAIN and _plainly_safe(v, depth + 1) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plainly_safe(v, depth + 1) for v in value)
    return False


def _safe_to_load(checkpoint: dict, data: memoryview, path: Path, state: LoopState) -> None:
    """The run's first checkpoint must load back the way a resume loads it (weights_only):
    an optimizer or scheduler whose state holds an object would otherwise write checkpoints
    its own resume refuses. Checked once per run, before the file is written; by loading only
    when a walk over the checkpoint finds something other than plain values and tensors."""
    if _plainly_safe(checkpoint):
        return
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

    writes = True

    def __init__(self, run: Run, is_main: bool, sync: bool = False) -> None:
        self.run, self.is_main = run, is_main
        self.folder = run.run_dir / "checkpoints"
        self.checked = False
        # with an observer of CHECKPOINT_WRITTEN, each file is on disk before it hears of it;
        # otherwise the run's file writer (run.files) writes them while training goes on
        self.sync = sync or run.files is None
        self.epoch_files: set[Path] = set()   # handed over, maybe not on disk yet
        self.config = to_dict(run.cfg)   # read once: every checkpoint of the run holds it

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]:
        """checkpoints/last.pt now (a stop signal, or checkpoint_every_n_steps)."""
        if not self.is_main:
            return []
        path = self.folder / "last.pt"
        data = self._serialized(state, mid_epoch, path)
        try:
            self._check()
            self._put(path, data)
            self._settle()
        except OSError as exc:
            raise self._failure(state, exc, epoch_end=False) from None
        return [str(path)]

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]:
        """best.pt and model.pt when the validation improved, then last.pt (and keep_last)."""
        if not self.is_main:
            return []
        written: list[str] = []
        data = self._serialized(state, False, self.folder / "last.pt")
        try:
            self._check()
            self._save_epoch_files(state, data, improved, written)
            self._settle()
        except OSError as exc:
            raise self._failure(state, exc, epoch_end=True) from None
        return written

    def _save_epoch_files(self, state: LoopState, data: memoryview, improved: bool,
                          written: list[str]) -> None:
        # one write of the bytes for best.pt, the epoch file and last.pt (hard links), model.pt
        # before last.pt: a kill before last.pt lands redoes the epoch on resume, rewriting all
        run, keep_last = self.run, self.run.cfg.train.keep_last
        paths, others = [], ()
        if improved:
            paths.append(self.folder / "best.pt")
            others = ((run.run_dir / "model.pt", ckpt.to_bytes(run.model.state_dict())),)
            written.append(str(self.folder / "best.pt"))
        epoch_file = self.folder / f"epoch-{state.epoch:04d}.pt" if keep_last else None
        if epoch_file is not None:
            paths.append(epoch_file)
        paths.append(self.folder / "last.pt")
        self._put_shared(paths, data, others)
        if epoch_file is not None:
            # the folder's files and those handed over: a resumed run counts the ones written
            # before it, and a write still pending counts too
            self.epoch_files |= {*ckpt.epoch_files(self.folder), epoch_file}
            for old in sorted(self.epoch_files)[:-keep_last]:
                self._drop(old)
        written.append(str(self.folder / "last.pt"))

    def _put_shared(self, paths: list[Path], data: memoryview, others: tuple) -> None:
        if self.run.files is None:
            atomic_write_shared(paths, data, others)
        else:
            self.run.files.write_shared(paths, data, others)

    def _put(self, path: Path, data: memoryview) -> None:
        if self.run.files is None:
            ckpt.save(path, data)
        else:
            self.run.files.write(path, data)

    def _drop(self, path: Path) -> None:
        self.epoch_files.discard(path)
        if self.run.files is None:
            path.unlink(missing_ok=True)
        else:
            self.run.files.unlink(path)

    def _check(self) -> None:
        if self.run.files is not None:
            self.run.files.check()   # a file handed over earlier failed: the run fails now

    def _settle(self) -> None:
        if self.sync and self.run.files is not None:
            self.run.files.flush()

    def _serialized(self, state: LoopState, mid_epoch: bool, path: Path) -> memoryview:
        checkpoint = checkpoint_dict(self.run, state, mid_epoch=mid_epoch, config=self.config)
        data = ckpt.to_bytes(checkpoint)
        if not self.checked:
            _safe_to_load(checkpoint, data, path, state)
            self.checked = True
        return data

    def _failure(self, state: LoopState, exc: OSError, epoch_end: bool) -> TrainingFailed:
        # at an epoch's end the state has moved on to the next epoch: blame the one just done
        epoch = state.epoch - 1 if epoch_end else state.epoch
        return TrainingFailed(failure_message(exc, self.folder), state, epoch,
                              max(state.step - 1, 0))

    def close(self) -> None:
        """Wait for every file handed over (a failed write raises its OSError)."""
        if self.run.files is not None:
            self.run.files.flush()
