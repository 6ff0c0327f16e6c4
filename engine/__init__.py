"""A functional PyTorch training engine: one pure loop over a frozen Recipe.

    from engine import Recipe, TrainConfig, fit
    result = fit(recipe, cfg, run_dir=None)

Importing the engine writes no file and configures no logger. Names load on first use, so
`python -m engine` can set up the process (OpenMP's wait policy) before torch is imported.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "engine.config", "Event": "engine.events", "listens_to": "engine.events",
    "RecipeFailed": "engine.loop", "RunResult": "engine.loop", "fit": "engine.loop",
    "recipe_from_trainer": "engine.migrate", "Loaders": "engine.recipe",
    "Recipe": "engine.recipe", "Schedule": "engine.recipe", "StepContext": "engine.recipe",
    "StepOutput": "engine.recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
