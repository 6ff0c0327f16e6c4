"""`python -m engine check NAME`: the full preflight, one line per check.

    ok    config     AutoencoderConfig from recipes.toml [autoencoder]
    FAIL  forward    the model cannot take the first training batch: ...
    skip  loss       needs forward

Each check is a function of what the earlier ones made (`have`); one that needs something a
failed check did not make is reported as skipped. Nothing is trained for real and nothing is
written: the overfit check trains a copy of the model, and the global RNG is restored at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from engine.core import rng
from engine.core.building import first_line, user_frame
from engine.core.errors import UserError, UserErrors
from engine.tools.check_steps import (
    Outcome,
    _fail,
    check_config,
    check_device,
    check_loaders,
    check_model,
    check_output,
    check_placement,
    check_recipe,
    check_registry,
    check_sample,
    check_train_batch,
    check_val_batch,
    check_values,
)
from engine.tools.check_training import (
    check_forward,
    check_gradients,
    check_loss,
    check_memory,
    check_optimizer,
    check_overfit,
    check_scheduler,
    check_settings,
)

__all__ = ["CHECKS", "Outcome", "check_placement", "cli", "run_checks"]

# --- running them ----------------------------------------------------------------------------

CHECKS: tuple[tuple[str, Callable, tuple[str, ...]], ...] = (
    ("registry", check_registry, ()),
    ("recipe", check_recipe, ("entry",)),
    ("config", check_config, ("recipe",)),
    ("device", check_device, ("cfg",)),
    ("output dir", check_output, ("cfg",)),
    ("model", check_model, ("cfg", "device")),
    ("loaders", check_loaders, ("cfg",)),
    ("train batch", check_train_batch, ("loaders",)),
    ("val batch", check_val_batch, ("loaders",)),
    ("batch values", check_values, ("batch",)),
    ("batch device", check_placement, ("batch", "model")),
    ("dataset[0]", check_sample, ("loaders", "model")),
    ("forward", check_forward, ("moved",)),
    ("loss", check_loss, ("out",)),
    ("gradients", check_gradients, ("loss",)),
    ("optimizer", check_optimizer, ("model",)),
    ("scheduler", check_scheduler, ("optimizer", "loaders")),
    ("settings", check_settings, ("optimizer", "loaders")),
    ("overfit", check_overfit, ("loss",)),
    ("memory", check_memory, ("activations",)),
)

# which check makes what, to say why a check was skipped
_MADE_BY = {"entry": "registry", "recipe": "recipe", "cfg": "config", "device": "device",
            "model": "model", "loaders": "loaders", "batch": "train batch",
            "moved": "batch device", "out": "forward", "loss": "loss",
            "optimizer": "optimizer", "activations": "forward"}


def run_checks(have: dict, emit: Callable[[str, str, str], None]) -> list:
    """Run every check in order; `emit(status, name, detail)` per line. Returns the errors."""
    errors: list = []
    for name, check, needs in CHECKS:
        missing = [_MADE_BY[k] for k in needs if k not in have]
        if missing:
            emit("skip", name, f"skipped: needs {missing[0]}")
            continue
        try:
            detail, products = check(have)
        except Outcome as outcome:
            if outcome.status == "FAIL":
                errors.append(outcome.error)
            emit(outcome.status, name, outcome.detail)
            continue
        except (UserError, UserErrors) as exc:
            outcome = _fail(exc)
            errors.append(exc)
            emit("FAIL", name, outcome.detail)
            continue
        except Exception as exc:   # recipe code the check calls directly (forward_batch, ...)
            error = UserError(f"{name} check failed: {type(exc).__name__}",
                              where=user_frame(exc) or f"recipe '{have['name']}'",
                              expected=f"the {name} check to run", found=first_line(exc))
            errors.append(error)
            emit("FAIL", name, error.what)
            continue
        have.update(products)
        emit("ok", name, detail)
    return errors


def cli(name: str, *, recipes: str | None = None, config_file: str | None = None,
        sets: Sequence[str] = ()) -> int:
    """See `engine.core.preflight.cli`."""
    width = max(len(n) for n, _, _ in CHECKS)
    counts: dict[str, int] = {}

    def emit(status: str, check: str, detail: str) -> None:
        counts[status] = counts.get(status, 0) + 1
        print(f"{status:<4}  {check:<{width}}  {detail}", flush=True)

    have = {"name": name, "recipes": recipes, "config_file": config_file, "sets": tuple(sets)}
    saved_rng = rng.rng_state()
    try:
        errors = run_checks(have, emit)
    finally:
        rng.set_rng_state(saved_rng)
    print(f"{counts.get('ok', 0)} ok, {counts.get('warn', 0)} warn, {counts.get('FAIL', 0)} "
          f"FAIL, {counts.get('skip', 0)} skipped")
    for error in errors:
        print(error.render(), file=sys.stderr)
    return 2 if errors else 0
