"""Checkpoints: what a resumable run stores, atomic saves, and safe loads.

A checkpoint holds tensors and plain values only (the config and loop state as dicts of
numbers, strings and lists; RNG states as tensors and lists), so `torch.load(path,
weights_only=True)` reads it with no allow-list and nothing in it can run code.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

from engine.core.distributed import check_resume_world
from engine.core.errors import UserError, first_line
from engine.core.state import EpochTotals, LoopState, Run, loop_state_from_dict
from engine.io.checkpoint_checks import check_entries, check_fits
from engine.io.files import atomic_write_bytes

FORMAT = 1
_log = logging.getLogger("engine")


_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


def epoch_files(folder: str | Path) -> list[Path]:
    """The `epoch-NNNN.pt` checkpoints (train.keep_last) in `folder`, oldest epoch first."""
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir()
             if (m := _EPOCH_FILE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def to_bytes(checkpoint: dict) -> memoryview:
    """A checkpoint serialised once, so last.pt, best.pt and epoch files share the bytes: a
    view of torch.save's buffer, not a copy of it (a checkpoint is the size of the model and
    its optimizer state, each epoch)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer()


def save(path: str | Path, checkpoint: dict | bytes | memoryview) -> None:
    """Write a checkpoint atomically (a torn write is impossible: temp file, fsync, rename)."""
    data = (checkpoint if isinstance(checkpoint, (bytes, memoryview))
            else to_bytes(checkpoint))
    atomic_write_bytes(path, data)


def load(path: str | Path) -> dict:
    """Read a checkpoint with weights_only=True; anything else is a UserError naming the file."""
    path = Path(path)
    where = str(path)
    if path.is_dir():
        raise UserError("the checkpoint is a folder, not a file", where=where,
                        expected="a checkpoint file (.pt) written by the engine",
                        found="a folder")
    if not path.is_file():
        raise UserError("checkpoint not found", where=where, expected="a checkpoint file (.pt)",
                        found="no such file")
    _check_torch_file(path)
    try:
        with warnings.catch_warnings():   # junk bytes make torch warn of odd pickle protocols
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError("checkpoint refused: not a safe checkpoint", where=where,
                        expected="tensors and plain values only (weights_only=True)",
                        found=_why_unsafe(exc)) from None
    except Exception as exc:
        # the file was readable (its head was read): a torn archive fails anywhere in torch's
        # reader, even as an OSError (EINVAL seeking past its end)
        raise UserError("checkpoint cannot be read: the file is torn (cut short or damaged)",
                        where=where, expected="a complete checkpoint written by the engine",
                        found=f"{path.stat().st_size} bytes; {_first_line(exc)}",
                        hint=_torn_hint(path)) from None
    _check_engine_dict(data, where)
    return data


def _torn_hint(path: Path) -> str:
    """What to do about a damaged checkpoint (the engine writes them whole, atomically: something
    else cut or changed it)."""
    if path.name == "last.pt":
        return ("something other than the engine cut or changed it; resume from an epoch-NNNN.pt "
                "or the best.pt beside it, if there is one")
    return ("something other than the engine cut or changed it; move it aside (model.pt holds "
            "the best weights too) and resume again")


# what torch.save writes: a zip archive (torch >= 1.6), or a pickle (protocol 2+) before that
_TORCH_HEADS = (b"PK\x03\x04", b"\x80")


def _check_torch_file(path: Path) -> None:
    """A file that is empty or no torch file at all, said as such (torch would report a
    KeyError or an unpickling error that reads like a damaged or unsafe checkpoint)."""
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError as exc:
        raise UserError("checkpoint cannot be read", where=str(path), expected="a readable file",
                        found=exc.strerror or str(exc)) from None
    if not head:
        raise UserError("the checkpoint is an empty file", where=str(path),
                        expected="a checkpoint written by the engine", found="0 bytes",
                        hint=_torn_hint(path))
    if not head.startswith(_TORCH_HEADS):
        raise UserError("not a checkpoint: the file is not one torch.save writes",
                        where=str(path), expected="a torch file (a zip archive, starting PK)",
                        found=f"{path.stat().st_size} bytes starting {head!r}",
                        hint="--resume takes a run directory or a checkpoints/*.pt file in one")


def _first_line(exc: Exception) -> str:
    # torch's zip reader appends a paragraph of advice after the first sentence
    return first_line(exc).split(". This is an internal")[0]


def _why_unsafe(exc: pickle.UnpicklingError) -> str:
    """The line of torch's message that names what was refused (a GLOBAL, say): its first line
    is the same advice on weights_only for every file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed",
                                                              "Check the documentation"))]
    return ((useful or lines or ["unpickling failed"])[0])[:200]


def _check_engine_dict(data: Any, where: str) -> None:
    if isinstance(data, dict) and data.get("format") == FORMAT and "model" in data:
        return
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor)
                                               for v in data.values()):
        raise UserError("not an engine checkpoint: the file holds weights only", where=where,
                        expected=f"a dict with format = {FORMAT}, model, optimizer, loop, rng",
                        found=f"a plain state_dict of {len(data)} tensors "
                              f"({', '.join(map(str, list(data)[:4]))}, ...)",
                        hint="model.pt holds the best weights only; resume the run directory "
                             "(its checkpoints/last.pt)")
    keys = (", ".join(map(str, list(data)[:8])) if isinstance(data, dict)
            else type(data).__name__)
    raise UserError("not an engine checkpoint", where=where,
                    expected=f"a dict with format = {FORMAT}, model, optimizer, loop, rng",
                    found=keys)


def check_matches(checkpoint: dict, path: str | Path, recipe_name: str,
                  model: torch.nn.Module) -> None:
    """The checkpoint belongs to this recipe and its model has the config's shapes."""
    if checkpoint.get("recipe") != recipe_name:
        raise UserError("checkpoint is from another recipe", where=str(path),
                        expected=f"a checkpoint of '{recipe_name}'",
                        found=f"a checkpoint of '{checkpoint.get('recipe')}'")
    mismatch = state_dict_mismatch(checkpoint["model"], model.state_dict())
    if mismatch:
        raise UserError("checkpoint does not fit the model built from the config",
                        where=str(path), expected=mismatch[0], found=mismatch[1],
                        hint="resume with the config the run was started with")


def state_dict_mismatch(saved: dict, current: dict) -> tuple[str, str] | None:
    """(expected, found) for the first difference between two state_dicts, or None."""
    if not isinstance(saved, dict):
        return "the model's state_dict", type(saved).__name__
    for key, tensor in current.items():
        if key not in saved:
            return f"parameter '{key}' {tuple(tensor.shape)}", "no such parameter in the file"
        if not isinstance(saved[key], torch.Tensor):
            return f"parameter '{key}' as a tensor", type(saved[key]).__name__
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return (f"parameter '{key}' of shape {tuple(tensor.shape)}",
                    f"shape {tuple(saved[key].shape)}")
    for key in saved:
        if key not in current:
            return "the model's parameters", f"extra parameter '{key}' in the file"
    return None


def check_resumable(path: str | Path, name: str, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> None:
    """Everything `restore` checks, before the run directory exists (a UserError)."""
    data = load(path)
    check_matches(data, path, name, model)
    check_entries(data, path)
    check_fits(data, path, model, optimizer)


def restore(run: Run, path: str | Path) -> tuple[LoopState, Any]:
    """Load a checkpoint into the run's objects: the loop state to continue from and the RNG
    state to restore once the loop starts. Everything is checked before anything is loaded;
    what the resume can do without (scheduler, scaler, epoch_rng) is skipped with a warning."""
    data = load(path)
    check_matches(data, path, run.name, run.model)
    check_entries(data, path)
    check_fits(data, path, run.model, run.optimizer)
    check_resume_world(data, run.world_size, str(path))
    run.model.load_state_dict(data["model"])
    run.optimizer.load_state_dict(data["optimizer"])
    _restore_optional(run, data, path)
    state = loop_state_from_dict(data["loop"], run)
    totals = data["loop"].get("totals")
    epoch_rng = data.get("epoch_rng")
    if state.batch > 0 and not isinstance(epoch_rng, dict):
        _log.warning("warning: %s holds no RNG state for the start of epoch %d: the resumed "
                     "epoch skips its first %d batches in another data order", path,
                     state.epoch + 1, state.batch)
        epoch_rng = data["rng"]
    state = attrs.evolve(state, totals=EpochTotals(**totals) if totals else EpochTotals(),
                         epoch_rng=epoch_rng)
    return state, data["rng"]


def _restore_optional(run: Run, data: dict, path: str | Path) -> None:
    """The scheduler's and scaler's states, where the checkpoint has ones that fit."""
    for what, target in (("scheduler", run.schedule.scheduler if run.schedule else None),
                         ("scaler", run.scaler)):
        saved = data.get(what)
        if target is None:
            if saved is not None:
                _log.warning("warning: %s holds %s state, but this run has no %s: ignored",
                             path, what, what)
            continue
        kind = type(target).__name__
        if not isinstance(saved, dict) or set(saved) != set(target.state_dict()):
            _log.warning("warning: %s holds no %s state that fits this run's %s (%s): it "
                         "starts afresh", path, what, kind,
                         "none" if saved is None else "other keys")
            continue
        target.load_state_dict(saved)


def _weights_in_model_pt(path: Path) -> dict | None:
    """best.pt deleted by hand: model.pt, written with every best.pt and before last.pt, holds
    the same weights; without them a resume that never improves would return (and a recipe
    evaluate) its last weights as if they were its best."""
    model_pt = path.parent.parent / "model.pt"
    if path.name != "last.pt" or path.parent.name != "checkpoints" or not model_pt.is_file():
        return None   # an older checkpoint's best is not model.pt's
    try:
        weights = torch.load(model_pt, map_location="cpu", weights_only=True)
    except Exception:   # a damaged model.pt: no best weights, as before
        return None
    return weights if isinstance(weights, dict) else None


def best_weights_beside(path: str | Path, state: LoopState) -> dict | None:
    """A resumed run's best weights so far, from the best.pt beside its checkpoint, so that the
    returned model is the best one even when the resume never improves on it."""
    best = Path(path).with_name("best.pt")
    if state.best_epoch is None:
        return None
    if not best.is_file():
        return _weights_in_model_pt(Path(path))
    data = load(best)
    if (data.get("loop") or {}).get("best_epoch") != state.best_epoch:
        return None
    return data["model"]
