"""Checkpoints: what a resumable run stores, atomic saves, and safe loads.

A checkpoint holds tensors and plain values only (the config and loop state as dicts of
numbers, strings and lists; RNG states as tensors and lists), so `torch.load(path,
weights_only=True)` reads it with no allow-list and nothing in it can run code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import attrs
import torch

from engine.core.distributed import check_resume_world
from engine.core.errors import UserError
from engine.core.nonfinite import load_objects
from engine.core.state import EpochTotals, LoopState, Run, loop_state_from_dict
from engine.io.files import atomic_write_bytes

FORMAT = 1


_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


def epoch_files(folder: str | Path) -> list[Path]:
    """The `epoch-NNNN.pt` checkpoints (train.keep_last) in `folder`, oldest epoch first."""
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir()
             if (m := _EPOCH_FILE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def to_bytes(checkpoint: dict) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def save(path: str | Path, checkpoint: dict | bytes) -> None:
    """Write a checkpoint atomically (a torn write is impossible: temp file, fsync, rename)."""
    data = checkpoint if isinstance(checkpoint, bytes) else to_bytes(checkpoint)
    atomic_write_bytes(path, data)


def load(path: str | Path) -> dict:
    """Read a checkpoint with weights_only=True; anything else is a UserError naming the file."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise UserError("checkpoint not found", where=where, expected="a checkpoint file (.pt)",
                        found="no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # the first line says why; the rest is torch's advice on allow-lists, not for us
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        raise UserError("checkpoint refused: not a safe checkpoint", where=where,
                        expected="tensors and plain values only (weights_only=True)",
                        found=first[:200]) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError("checkpoint cannot be read: torn or not a checkpoint", where=where,
                        expected="a complete checkpoint written by the engine",
                        found=first[:200]) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
        keys = (", ".join(map(str, list(data)[:8])) if isinstance(data, dict)
                else type(data).__name__)
        raise UserError("not an engine checkpoint", where=where,
                        expected=f"a dict with format = {FORMAT}, model, optimizer, loop, rng",
                        found=keys)
    return data


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
    for key, tensor in current.items():
        if key not in saved:
            return f"parameter '{key}' {tuple(tensor.shape)}", "no such parameter in the file"
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return (f"parameter '{key}' of shape {tuple(tensor.shape)}",
                    f"shape {tuple(saved[key].shape)}")
    for key in saved:
        if key not in current:
            return "the model's parameters", f"extra parameter '{key}' in the file"
    return None


def restore(run: Run, path: str | Path) -> tuple[LoopState, Any]:
    """Load a checkpoint into the run's objects: the loop state to continue from and the RNG
    state to restore once the loop starts."""
    data = load(path)
    check_matches(data, path, run.name, run.model)
    check_resume_world(data, run.world_size, str(path))
    load_objects(run, data)
    state = loop_state_from_dict(data["loop"], run)
    totals = data["loop"].get("totals")
    state = attrs.evolve(state, totals=EpochTotals(**totals) if totals else EpochTotals(),
                         epoch_rng=data.get("epoch_rng"))
    return state, data["rng"]


def best_weights_beside(path: str | Path, state: LoopState) -> dict | None:
    """A resumed run's best weights so far, from the best.pt beside its checkpoint, so that the
    returned model is the best one even when the resume never improves on it."""
    best = Path(path).with_name("best.pt")
    if state.best_epoch is None or not best.is_file():
        return None
    data = load(best)
    if (data.get("loop") or {}).get("best_epoch") != state.best_epoch:
        return None
    return data["model"]
