"""`run --resume PATH`: which run directory, checkpoint and base config a resume uses.

PATH is a run directory (its checkpoints/last.pt), or a checkpoint inside one (that run goes
on in its directory), or a checkpoint elsewhere (a new run directory starts from the config
stored in the checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from engine.core.config import flatten
from engine.core.errors import UserError
from engine.io import checkpoint as ckpt
from engine.io.checkpoint_checks import check_entries
from engine.io.layering import read_toml
from engine.io.metrics import read_metrics


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
    stored_config: dict = attrs.field(factory=dict)   # the config the checkpoint holds

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

    def not_applied(self, cfg_dict: dict) -> list[str]:
        """The settings a finished run was asked to change (`--set model.hidden_dim=32`) that
        nothing applies, since nothing runs: said, not dropped in silence."""
        return changed_keys(cfg_dict, self.stored_config,
                            ignore=("train.epochs", "train.early_stopping_patience"))


def plan(path: str | Path, name: str, config_given: bool = False) -> ResumePlan:
    """The ResumePlan for `--resume PATH` of recipe `name` (`config_given`: with --config); a
    path that is not a run or a checkpoint of it is a UserError. Everything is checked before
    anything is written."""
    if not str(path).strip():   # `--resume ""` (an unset shell variable) is no new run
        raise UserError("--resume needs a path", where=f"--resume {str(path)!r}",
                        expected="a run directory or a checkpoint file", found="an empty path")
    path = Path(path)
    checkpoint, run_dir = _locate(path)
    data = ckpt.load(checkpoint)
    if data.get("recipe") != name:
        raise UserError("the checkpoint is from another recipe", where=f"--resume {path}",
                        expected=f"a run of '{name}'", found=f"a run of '{data.get('recipe')}'")
    check_entries(data, checkpoint)   # before anything is built: the file alone
    stored = data.get("config")
    if run_dir is not None:
        source = str(run_dir / "config.toml")
        base = read_toml(run_dir / "config.toml", "run config")
        check_run_dir(run_dir, checkpoint, data, base)
    else:
        base, source = stored or {}, f"{checkpoint} (stored config)"
        if not stored and not config_given:   # the recipe's defaults would stand in silently
            raise UserError("the checkpoint holds no config to start a new run from",
                            where=str(checkpoint), expected="a 'config' entry (the engine "
                            "writes one in every checkpoint)", found="none",
                            hint="resume the run directory it came from, or give the run's "
                                 "config.toml with --config")
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
                      bad_validations=int(loop.get("bad_validations", 0)),
                      stored_config=stored if isinstance(stored, dict) else {})


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(the checkpoint, its run directory or None) that `--resume PATH` names."""
    if path.is_dir() and path.suffix != ".pt":
        checkpoint = path / "checkpoints" / "last.pt"
        if checkpoint.is_dir():
            raise _ckpt_folder(checkpoint)
        if not checkpoint.is_file():
            inside = path.name == "checkpoints" and (path / "last.pt").is_file()
            raise UserError("nothing to resume in this folder", where=f"--resume {path}",
                            expected="a run directory with checkpoints/last.pt",
                            found="no checkpoints/last.pt" if (path / "metrics.json").exists()
                            else "not a run directory",
                            hint=f"resume the run directory: --resume {path.parent}" if inside
                            else None)
        return checkpoint, path
    if path.is_dir():
        raise _ckpt_folder(path)
    if path.is_file():
        parent = path.parent
        in_run = parent.name == "checkpoints" and (parent.parent / "config.toml").exists()
        return path, parent.parent if in_run else None
    raise UserError("resume path not found", where=f"--resume {path}",
                    expected="a run directory or a checkpoint file", found="no such path")


def _ckpt_folder(path: Path) -> UserError:
    return UserError("the checkpoint is a folder, not a file", where=str(path),
                     expected="a checkpoint file written by the engine", found="a folder")


def check_run_dir(run_dir: Path, checkpoint: Path, data: dict, base: dict) -> None:
    """What a resume in place needs of the run directory, checked before anything is written:
    the newest checkpoint, a whole config.toml and metrics.json, folders it can write."""
    _check_newest(run_dir, checkpoint, data)
    _check_config_whole(run_dir / "config.toml", base, data.get("config"))
    read_metrics(run_dir)   # a torn one: refused before anything is written
    _check_writable(run_dir)


def _progress(data: dict) -> tuple[int, int]:
    loop = data.get("loop") or {}
    return int(loop.get("epoch", 0)), int(loop.get("step", 0))


def _check_newest(run_dir: Path, checkpoint: Path, data: dict) -> None:
    """best.pt or an epoch file older than last.pt, resumed in place, would overwrite what the
    run did after it (last.pt, its history): refused. A last.pt that cannot be read does not
    stop it: resuming an older checkpoint is then how the run is recovered."""
    last = run_dir / "checkpoints" / "last.pt"
    if checkpoint.resolve() == last.resolve() or not last.is_file():
        return
    try:
        newest = _progress(ckpt.load(last))
    except UserError:
        return
    if newest > _progress(data):
        epoch, step = _progress(data)
        raise UserError(
            "the checkpoint is older than the run's last.pt: resumed in place it would "
            "overwrite what the run did after it", where=f"--resume {checkpoint}",
            expected=f"the run's newest checkpoint ({last}, epoch {newest[0]}, step "
                     f"{newest[1]}), or a copy of this one outside the run directory",
            found=f"epoch {epoch}, step {step}",
            hint=f"to branch a new run from it: cp {checkpoint} elsewhere.pt and --resume "
                 f"elsewhere.pt (a new run directory, from the config it holds)")


def changed_keys(cfg_dict: dict, stored: dict, ignore: tuple = ()) -> list[str]:
    """Dotted keys whose value in `cfg_dict` differs from the checkpoint's stored config."""
    now, then = flatten(cfg_dict), flatten(stored)
    return [k for k in now if k not in ignore and k in then and now[k] != then[k]]


def _check_config_whole(path: Path, base: dict, stored: object) -> None:
    """The engine writes every setting to config.toml; one the checkpoint holds but the file
    lacks means a torn or emptied file, and the resume would take the recipe's default for it
    in silence."""
    if not isinstance(stored, dict):
        return
    have = flatten(base)
    missing = {k: v for k, v in flatten(stored).items() if k not in have}
    if not missing:
        return
    shown = ", ".join(f"{k} = {v!r}" for k, v in list(missing.items())[:4])
    raise UserError("the run's config.toml lacks settings the run was trained with",
                    where=str(path), expected="every setting of the config the checkpoint "
                    "holds", found=f"{len(missing)} missing: {', '.join(list(missing)[:6])}"
                    + (", ..." if len(missing) > 6 else ""),
                    hint=f"config.toml looks torn or emptied: put the settings back "
                         f"({shown}{', ...' if len(missing) > 4 else ''}; the checkpoint "
                         f"holds them all) and resume again")


def _check_writable(run_dir: Path) -> None:
    """A resume rewrites last.pt, metrics.json and config.toml and appends to train.log: a
    folder it cannot write would fail the run after training an epoch."""
    for path in (run_dir, run_dir / "checkpoints", run_dir / "train.log"):
        if path.exists() and not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise UserError("the run directory cannot be written", where=str(path),
                            expected="a run directory this user can write (a resume "
                                     "continues in it)", found="not writable by this user",
                            hint="copy the run directory somewhere writable and resume the "
                                 "copy")
