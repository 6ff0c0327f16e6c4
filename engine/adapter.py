"""The public import path of the old hook contract: `from engine.adapter import BaseTrainer`.
The class lives in `engine.compat.adapter`."""

from engine.compat.adapter import BaseTrainer

__all__ = ["BaseTrainer"]
