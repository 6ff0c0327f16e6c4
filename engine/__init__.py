"""A functional PyTorch training engine: one pure loop over a frozen Recipe.

    from engine import Recipe, TrainConfig, fit
    result = fit(recipe, cfg, run_dir=None)

This is the public API, curated: what recipes and scripts import. The layers below it
(engine.core, engine.io, engine.tools, engine.study, engine.compat, engine.cli) are the
implementation. Importing the engine writes no file and configures no logger. Names load on
first use, so `python -m engine` can set up the process (OpenMP's wait policy) before torch is
imported.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    # a recipe and what its functions return
    "Recipe": "engine.core.recipe", "Loaders": "engine.core.recipe",
    "StepOutput": "engine.core.recipe", "StepContext": "engine.core.recipe",
    "Schedule": "engine.core.schedules", "TrainConfig": "engine.core.config",
    # observing a run
    "Event": "engine.core.events", "listens_to": "engine.core.events",
    # training
    "fit": "engine.io.fit", "RunResult": "engine.io.fit", "RecipeFailed": "engine.io.fit",
    "wait_for_plots": "engine.io.plot_service",
    # mistakes: one clear message each (exit code 2 from the CLI)
    "UserError": "engine.core.errors", "UserErrors": "engine.core.errors",
    "raise_all": "engine.core.errors",
    # what recipes write beside a run's files
    "add_metrics_entry": "engine.io.metrics", "atomic_torch_save": "engine.io.files",
    # old trainers
    "recipe_from_trainer": "engine.compat.migrate",
}
# modules of builders a recipe names: `build_optimizer=optimizers.adamw`
_MODULES = {"optimizers": "engine.core.optimizers", "schedules": "engine.core.schedules"}

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
