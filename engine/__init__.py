"""A functional PyTorch training engine: one pure loop over a frozen Recipe.

    from engine import Recipe, TrainConfig, fit
    result = fit(recipe, cfg, run_dir=None)

Importing the engine writes no file and configures no logger.
"""

from engine.config import TrainConfig
from engine.events import Event, listens_to
from engine.loop import RecipeFailed, RunResult, fit
from engine.migrate import recipe_from_trainer
from engine.recipe import Loaders, Recipe, Schedule, StepContext, StepOutput

__all__ = [
    "Event", "Loaders", "Recipe", "RecipeFailed", "RunResult", "Schedule", "StepContext",
    "StepOutput", "TrainConfig", "fit", "listens_to", "recipe_from_trainer",
]
