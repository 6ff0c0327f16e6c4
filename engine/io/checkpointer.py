"""The run directory's checkpointer: what `fit` hands the loop when it has a run directory.

    checkpoints/last.pt   after every epoch (and every `checkpoint_every_n_steps` steps)
    checkpoints/best.pt   when a validation is the new best, and `model.pt` (plain weights)
    checkpoints/epoch-NNNN.pt  the last `keep_last` epochs

Each file is written whole or not at all (engine.io.files); only rank 0 writes.
"""

from __future__ import annotations

import attrs

from engine.core import rng
from engine.core.config import to_dict
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


class RunDirCheckpointer:
    """Writes last.pt, best.pt, model.pt and keep_last files under `run.run_dir`; returns
    the paths written, best first (the loop tells observers of each)."""

    def __init__(self, run: Run, is_main: bool) -> None:
        self.run, self.is_main = run, is_main
        self.folder = run.run_dir / "checkpoints"

    def save_last(self, state: LoopState, *, mid_epoch: bool) -> list[str]:
        if not self.is_main:
            return []
        path = self.folder / "last.pt"
        ckpt.save(path, checkpoint_dict(self.run, state, mid_epoch=mid_epoch))
        return [str(path)]

    def save_epoch_end(self, state: LoopState, *, improved: bool) -> list[str]:
        """best.pt and model.pt when the validation improved, then last.pt (and keep_last)."""
        if not self.is_main:
            return []
        run, keep_last, written = self.run, self.run.cfg.train.keep_last, []
        data = ckpt.to_bytes(checkpoint_dict(run, state, mid_epoch=False))
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
        return written

    def close(self) -> None:
        """Nothing pending: every write above returned once its file was in place."""
