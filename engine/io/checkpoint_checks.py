"""Is a checkpoint resumable by this run? Every entry checked before anything is loaded.

`check_entries` needs only the file (resume planning calls it before any object is built);
`check_fits` compares it with the run's model and optimizer. What a resume cannot do without
(model, optimizer, loop, rng) is a UserError naming the checkpoint and what does not match;
what it can do without (scheduler, scaler, epoch_rng) is skipped with a warning by the caller
(`engine.io.checkpoint.restore`).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import attrs
import torch

from engine.core.errors import UserError, raise_all
from engine.core.state import EpochTotals

# loop entry: key -> (what it must be, test)
_LOOP_KEYS = {
    "epoch": ("an int >= 0", lambda v: _count(v)),
    "step": ("an int >= 0", lambda v: _count(v)),
    "batch": ("an int >= 0", lambda v: _count(v)),
    "history": ("a dict of equal-length lists", lambda v: _history(v)),
    "best_val_loss": ("a number or None", lambda v: v is None or _number(v)),
    "best_epoch": ("an int >= 0 or None", lambda v: v is None or _count(v)),
    "bad_validations": ("an int >= 0", lambda v: _count(v)),
}
TOTALS_KEYS = tuple(f.name for f in attrs.fields(EpochTotals))
# torch's per-parameter optimizer state that has the parameter's shape (Adafactor's factored
# row and column statistics, say, do not: they are not checked)
PARAM_SHAPED = frozenset(("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer",
                          "square_avg", "acc_delta", "grad_avg", "sum", "exp_inf", "ax"))
HINT = "resume from a checkpoint this engine wrote for this recipe, with the config it ran with"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _history(value: Any) -> bool:
    return (isinstance(value, dict) and all(isinstance(v, list) for v in value.values())
            and len({len(v) for v in value.values()}) <= 1)


def _error(path: str | Path, what: str, expected: str, found: str,
           hint: str | None = HINT) -> UserError:
    return UserError(f"the checkpoint cannot be resumed: {what}", where=str(path),
                     expected=expected, found=found, hint=hint)


def _keys(value: Any) -> str:
    if not isinstance(value, dict):
        return type(value).__name__
    return "keys " + (", ".join(map(str, sorted(value, key=str))) or "(none)")


def check_entries(data: dict, path: str | Path) -> None:
    """The optimizer, loop and rng entries are there and have the engine's shape (all that is
    wrong reported at once)."""
    errors = []
    optimizer = data.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    for g in optimizer["param_groups"])):
        errors.append(_error(path, "no optimizer state", "an 'optimizer' entry (an optimizer's "
                             "state_dict: state, param_groups)",
                             "no 'optimizer' entry" if optimizer is None else _keys(optimizer)))
    errors += _loop_errors(data.get("loop"), path)
    state = data.get("rng")
    if not (isinstance(state, dict) and isinstance(state.get("torch"), torch.Tensor)
            and isinstance(state.get("python"), list) and len(state["python"]) == 3):
        errors.append(_error(path, "no RNG state", "an 'rng' entry with the python and torch "
                             "generators' states", "no 'rng' entry" if state is None
                             else _keys(state)))
    raise_all(errors)


def _loop_errors(loop: Any, path: str | Path) -> list[UserError]:
    if not isinstance(loop, dict):
        return [_error(path, "no loop state", "a 'loop' entry (epoch, step, batch, history, "
                       "best_val_loss, best_epoch, bad_validations)",
                       "no 'loop' entry" if loop is None else type(loop).__name__)]
    errors = []
    missing = [k for k in _LOOP_KEYS if k not in loop]
    if missing:
        errors.append(_error(path, f"the loop state lacks {', '.join(missing)}",
                             f"loop keys {', '.join(_LOOP_KEYS)}", _keys(loop)))
    for key, (expected, test) in _LOOP_KEYS.items():
        if key in loop and not test(loop[key]):
            errors.append(_error(path, f"loop.{key} is not {expected}", expected,
                                 f"{key} = {loop[key]!r}"[:200]))
    totals = loop.get("totals")
    if totals is not None and not (isinstance(totals, dict) and set(totals) == set(TOTALS_KEYS)
                                   and all(_number(v) for v in totals.values())):
        errors.append(_error(path, "loop.totals does not hold this engine's epoch totals",
                             f"None or numbers for {', '.join(TOTALS_KEYS)}", _keys(totals)))
    return errors


def _groups(param_groups: list) -> str:
    sizes = [len(g["params"]) for g in param_groups]
    return f"{len(sizes)} group(s) of {', '.join(map(str, sizes))} parameter tensor(s)"


def check_fits(data: dict, path: str | Path, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> None:
    """The checkpoint's optimizer state fits the optimizer the recipe built: the same parameter
    groups (count and sizes), the same kind, per-parameter state shaped like the parameters."""
    saved, current = data["optimizer"], optimizer.state_dict()
    hint = ("resume with the build_optimizer (and its config) the run was started with; a run "
            "whose grouping changes must start afresh")
    if [len(g["params"]) for g in saved["param_groups"]] != [
            len(g["params"]) for g in current["param_groups"]]:
        raise _error(path, "the optimizer's parameter groups changed",
                     f"{_groups(current['param_groups'])} ({type(optimizer).__name__} as "
                     f"build_optimizer makes it now)",
                     f"{_groups(saved['param_groups'])} in the checkpoint", hint)
    for old, new in zip(saved["param_groups"], current["param_groups"], strict=True):
        only_old = set(old) - set(new) - {"params", "param_names"}
        only_new = set(new) - set(old) - {"params", "param_names"}
        if only_old and only_new:   # e.g. Adam's betas against SGD's momentum
            raise _error(path, f"the optimizer is not the kind the run used "
                         f"({type(optimizer).__name__} now)",
                         f"settings {', '.join(sorted(only_new))} ({type(optimizer).__name__})",
                         f"settings {', '.join(sorted(only_old))} in the checkpoint", hint)
    # state is keyed by position in the flattened groups: the same positions now (same sizes)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    position = {key: i for i, key in enumerate(k for g in saved["param_groups"]
                                                for k in g["params"])}
    names = {id(p): n for n, p in model.named_parameters()}
    for key, entry in saved["state"].items():
        param = params[position[key]] if key in position else None
        for name, value in (entry.items() if isinstance(entry, dict) and param is not None
                            else ()):
            if name in PARAM_SHAPED and isinstance(value, torch.Tensor) \
                    and tuple(value.shape) != tuple(param.shape):
                raise _error(path, "the optimizer state does not fit the parameters",
                             f"'{name}' of shape {tuple(param.shape)} for parameter "
                             f"'{names.get(id(param), '?')}'", f"shape {tuple(value.shape)}",
                             hint)
