"""`run --resume PATH`: which run directory, checkpoint and base config a resume uses.

PATH is a run directory (its checkpoints/last.pt), or a checkpoint inside one (that run goes
on in its directory), or a checkpoint elsewhere (a new run directory starts from the config
stored in the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from engine.core.errors import UserError
from engine.io import checkpoint as ckpt
from engine.io.checkpoint_checks import check_entries
from engine.io.layering import read_toml


@attrs.frozen
class ResumePlan:
    """What `--resume PATH` continues: the checkpoint, its run directory (None for a
    checkpoint elsewhere: a new run), the config it was written with."""
    checkpoint: Path
    run_dir: Path | None          # None: a new run directory
    base_config: dict
    base_source: str
    epochs_done: int
    mid_epoch: bool
    early_stopped: bool = False
    bad_validations: int = 0

    def check_epochs(self, cfg: Any, where: str) -> None:
        """A resume that asks for fewer epochs than the run has done (or, stopped inside an
        epoch, no more than it finished) is a mistake: it would mark an unfinished run done
        and rewrite its config.toml. Refused before anything is written."""
        least = self.epochs_done + 1 if self.mid_epoch else self.epochs_done
        if cfg.train.epochs < least:
            raise UserError(
                "train.epochs is below what the run has already trained", where=where,
                expected=f"train.epochs >= {least} (the run did {self.epochs_done} epochs"
                         + (" and stopped inside the next one)" if self.mid_epoch else ")"),
                found=f"epochs = {cfg.train.epochs}",
                hint=f"leave train.epochs out to go on to the run's own "
                     f"{self.base_config.get('train', {}).get('epochs', 'epochs')}")

    def finished(self, cfg: Any) -> bool:
        """Nothing left to run: every epoch done, or early stopping ended the run and its
        patience (which `--set train.early_stopping_patience` may raise) is still used up."""
        if self.mid_epoch:
            return False
        patience = cfg.train.early_stopping_patience
        stopped = self.early_stopped and 0 < patience <= self.bad_validations
        return stopped or self.epochs_done >= cfg.train.epochs


def plan(path: str | Path, name: str) -> ResumePlan:
    """The ResumePlan for `--resume PATH` of recipe `name`; a path that is not a run or a
    checkpoint of it is a UserError."""
    path = Path(path)
    if path.is_dir():
        checkpoint = path / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise UserError("nothing to resume in this folder", where=f"--resume {path}",
                            expected="a run directory with checkpoints/last.pt",
                            found="no checkpoints/last.pt" if (path / "metrics.json").exists()
                            else "not a run directory")
        run_dir = path
    elif path.is_file():
        checkpoint = path
        parent = path.parent
        run_dir = parent.parent if parent.name == "checkpoints" and (
            parent.parent / "config.toml").is_file() else None
    else:
        raise UserError("resume path not found", where=f"--resume {path}",
                        expected="a run directory or a checkpoint file", found="no such path")
    data = ckpt.load(checkpoint)
    if data.get("recipe") != name:
        raise UserError("the checkpoint is from another recipe", where=f"--resume {path}",
                        expected=f"a run of '{name}'", found=f"a run of '{data.get('recipe')}'")
    check_entries(data, checkpoint)   # before anything is built: the file alone
    if run_dir is not None:
        base, source = read_toml(run_dir / "config.toml", "run config"), str(
            run_dir / "config.toml")
    else:
        base, source = data.get("config") or {}, f"{checkpoint} (stored config)"
        if not isinstance(base, dict):
            raise UserError("the checkpoint cannot be resumed: its stored config is not a "
                            "table", where=str(checkpoint), expected="a 'config' entry: a dict "
                            "of the config's tables", found=type(base).__name__,
                            hint="resume the run directory it belongs to instead")
    loop = data["loop"]
    return ResumePlan(checkpoint=checkpoint, run_dir=run_dir, base_config=base,
                      base_source=source, epochs_done=int(loop.get("epoch", 0)),
                      mid_epoch=int(loop.get("batch", 0)) > 0,
                      early_stopped=loop.get("status") == "early_stopped",
                      bad_validations=int(loop.get("bad_validations", 0)))
