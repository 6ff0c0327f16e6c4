"""The old `BaseTrainer` hook contract as a thin view over `fit` and its state.

    trainer = BaseTrainer.from_registry("autoencoder", overrides={"train.epochs": 2})
    history = trainer.train()              # runs engine.fit in a new run directory
    trainer.validate(); trainer.save_model(); trainer.plot_metrics()

Code written against the old contract keeps working while every trainer becomes a recipe. This
class holds no loop, no checkpoint logic and no early-stopping logic: each method calls the
engine's function that does the job. Before `train()`, the hooks act on the recipe's objects
built the way `fit` builds them (same seed); after it, on the run's objects (best weights).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

import steps
from engine.core import building
from engine.core.devices import resolve_device
from engine.core.distributed import World
from engine.core.errors import UserError, describe_value
from engine.core.recipe import StepContext
from engine.core.state import LoopState, Run, history_lists, record_validation
from engine.core.validation import validate
from engine.io.checkpointer import RunDirCheckpointer
from engine.io.files import atomic_torch_save
from engine.io.fit import RecipeFailed, RunResult, fit
from engine.io.metrics import read_metrics, write_metrics
from engine.io.plot_service import wait_for_plots
from engine.io.plots import plot_metrics
from engine.io.registry import resolve
from engine.io.run_dir import make_run_dir

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_OVERRIDES = "BaseTrainer.from_registry overrides"


class BaseTrainer:
    """The old hook contract over `engine.fit`. `name` is the registry key (default
    `recipe.name`); `run_dir` is where the run's files go (default: a new run directory under
    `cfg.train.output_dir`, made when first needed)."""

    def __init__(self, recipe: Any, cfg: Any, *, run_dir: str | Path | None = None,
                 name: str | None = None) -> None:
        building.check_inputs(recipe, cfg)
        self.recipe, self.cfg, self.name = recipe, cfg, name or recipe.name
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._result: RunResult | None = None
        self._built: Run | None = None
        self._decisions: LoopState | None = None   # check_early_stopping's own record
        self._bar = None

    @classmethod
    def from_registry(cls, name: str, overrides: Mapping[str, Any] | None = None,
                      recipes: str | Path | None = None, **kwargs: Any) -> BaseTrainer:
        """The recipe `name` of recipes.toml with `overrides` ({"train.epochs": 2}: dotted keys
        as --set takes them, Python values) on top, type- and range-checked like --set."""
        entry, recipe, cfg = resolve(name, recipes=recipes, base=_nest(overrides or {}),
                                     base_source=_OVERRIDES)
        return cls(recipe, cfg, name=entry.name, **kwargs)

    # --- the run ------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run `fit` in this trainer's run directory (a second call: a new one); the history."""
        _refuse_loop_overrides(type(self))
        if self._result is not None:
            self._run_dir = None
        try:
            self._result = fit(self.recipe, self.cfg, run_dir=self.run_dir, name=self.name)
        except RecipeFailed as exc:
            self._result = exc.result
            raise
        self._built, self._decisions = None, None
        wait_for_plots()   # the old train() returned with every file of the run written
        return self.history

    @property
    def history(self) -> dict:
        """The run's history, a dict of equal-length lists ({} before training)."""
        return history_lists(self._state().history)

    def validate(self) -> float:
        """One validation pass of the current model: the mean validation loss."""
        state = self._state()
        return validate(self._run(), state.epoch, state.step, World())["val_loss"]

    def _forward_batch(self, batch: Any) -> torch.Tensor:
        """The recipe's forward_batch on `batch` (moved to the device): the loss."""
        run, state = self._run(), self._state()
        if self.recipe.move_batch:
            batch = steps.move_to_device(batch, run.device)
        ctx = StepContext(run.device, run.model.training, state.epoch, state.step)
        return steps.split_output(self.recipe.forward_batch(run.model, batch, ctx))[0]

    compute_loss = _forward_batch

    def check_early_stopping(self, val_loss: float) -> bool:
        """Record `val_loss` with the loop's own decision and say whether patience ran out
        (counting from the run's state; train.early_stopping_patience 0 never stops)."""
        train, record = self.cfg.train, self._decisions
        if record is None:
            s = self._state()
            record = LoopState(best_val_loss=s.best_val_loss, best_epoch=s.best_epoch,
                               bad_validations=s.bad_validations)
        row = {"epoch": len(record.history.get("epoch", ())), "val_loss": float(val_loss)}
        # status back to running: an improvement after a stop resets patience, as it used to
        self._decisions = record_validation(attrs.evolve(record, status="running"), row,
                                            train.early_stopping_min_delta,
                                            train.early_stopping_patience)
        return self._decisions.status == "early_stopped"

    # --- files --------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """The run directory (made when first asked for)."""
        if self._run_dir is None:
            self._run_dir, _ = make_run_dir(self.cfg.train.output_dir, self.name)
        (self._run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        return self._run_dir

    def get_run_file_path(self, name: str) -> Path:
        """`name` inside the run directory."""
        return self.run_dir / name

    def get_model_save_path(self) -> Path:
        """The run's model.pt."""
        return self.get_run_file_path("model.pt")

    def save_checkpoint(self, epoch: int, is_best: bool = False) -> Path:
        """checkpoints/last.pt (and best.pt and model.pt when `is_best`) as the loop writes them
        after epoch `epoch` (0-based); returns last.pt's path."""
        # written here and now (no background writer): the old hook returned with the file saved
        run = attrs.evolve(self._run(), run_dir=self.run_dir, run_id=self.run_dir.name,
                           files=None)
        state = attrs.evolve(self._state(), run=run, epoch=epoch + 1, batch=0)
        RunDirCheckpointer(run, is_main=True).save_epoch_end(state, improved=is_best)
        return self.run_dir / "checkpoints" / "last.pt"

    def save_model(self) -> Path:
        """model.pt: the current model's weights (after train(): the best) as a state_dict."""
        atomic_torch_save(self.get_model_save_path(), self.model.state_dict())
        return self.get_model_save_path()

    def save_metrics(self) -> Path:
        """metrics.json of this trainer's run, written as the run writes it."""
        state = self._state()
        error = {k: state.error[k] for k in ("epoch", "step", "message")} if state.error else None
        write_metrics(self.run_dir, recipe=self.name, run_id=self.run_dir.name,
                      status=state.status, history=state.history, best_epoch=state.best_epoch,
                      best_val_loss=state.best_val_loss, error=error)
        return self.get_run_file_path("metrics.json")

    save_metrics_to_file = save_metrics

    def plot_metrics(self) -> Path:
        """metrics.png from the history (and any baselines already in metrics.json)."""
        state = self._state()
        metrics = {**read_metrics(self.run_dir), "history": self.history,
                   "best": {"epoch": state.best_epoch, "val_loss": state.best_val_loss}}
        path = self.get_run_file_path("metrics.png")
        plot_metrics(path, metrics, f"{self.name} {self.run_dir.name}")
        return path

    # --- progress bar -------------------------------------------------------------------------
    def init_progress_bar(self, total: int, desc: str = "", **tqdm_kwargs: Any) -> Any:
        """A tqdm bar (closing the previous one); hidden when stderr is not a terminal."""
        from tqdm import tqdm  # deferred: start-up time
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(**{"total": total, "desc": desc, "leave": False, "disable": None,
                            **tqdm_kwargs})
        return self._bar

    def update_progress_bar(self, n: int = 1, **postfix: Any) -> None:
        """Advance the bar made by init_progress_bar (a no-op before it)."""
        if self._bar is None:
            raise UserError("update_progress_bar before init_progress_bar",
                            where="BaseTrainer.update_progress_bar",
                            expected="init_progress_bar(total, desc) first", found="no bar")
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    # --- what the hooks act on ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the run trains on."""
        return self._run().device

    @property
    def model(self) -> torch.nn.Module:
        """The model: the run's best weights after train(), else the freshly built one."""
        return self._run().model

    @property
    def config(self) -> Any:
        """The recipe config this trainer was made with."""
        return self.cfg

    def _state(self) -> LoopState:
        # before train(): the state a run starts from (the hooks that need objects ask _run)
        return self._result.state if self._result is not None else LoopState()

    def _run(self) -> Run:
        if self._result is not None:
            return self._result.state.run
        if self._built is None:
            self._built = _build(self.recipe, self.cfg, self.name)
        return self._built


# the hooks the old train() called: fit runs the loop and calls none of them, so a subclass's
# own version would be skipped without a word
_LOOP_HOOKS = ("compute_loss", "_forward_batch", "validate", "check_early_stopping",
               "save_checkpoint", "save_model", "save_metrics", "save_metrics_to_file",
               "plot_metrics", "init_progress_bar", "update_progress_bar",
               "get_model_save_path", "get_run_file_path")


def _refuse_loop_overrides(cls: type) -> None:
    overridden = [h for h in _LOOP_HOOKS if getattr(cls, h) is not getattr(BaseTrainer, h)]
    if overridden:
        raise UserError(f"{cls.__qualname__} overrides hooks that BaseTrainer.train() does not "
                        "call", where=f"{cls.__module__}.{cls.__qualname__}",
                        expected="a subclass that overrides none of " + ", ".join(_LOOP_HOOKS),
                        found="overrides " + ", ".join(overridden),
                        hint="train() runs engine.fit: put the loss in the recipe's "
                             "forward_batch and extra files in a callback, or register the "
                             "old trainer with engine.compat.migrate.recipe_from_trainer")


def _build(recipe: Any, cfg: Any, name: str) -> Run:
    """The run's objects as fit builds them (same order from the same seed), untrained."""
    device = resolve_device(cfg.train.device)
    model, loaders, optimizer, schedule = building.build_objects(recipe, cfg, World(), device)
    return Run(recipe=recipe, cfg=cfg, model=model, train_model=model, optimizer=optimizer,
               schedule=schedule, scaler=steps.make_scaler(device, cfg.train.precision),
               loaders=loaders, device=device, name=name)


def _nest(overrides: Mapping[str, Any]) -> dict:
    """{"train.epochs": 2} as {"train": {"epochs": 2}}: a config layer like --set's."""
    if not isinstance(overrides, Mapping):
        raise UserError("overrides must be a dict", where=_OVERRIDES,
                        expected='{"train.epochs": 2, ...}', found=describe_value(overrides))
    data: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise UserError("invalid override key", where=_OVERRIDES,
                            expected="a dotted key such as train.learning_rate",
                            found=describe_value(key))
        *tables, leaf = key.split(".")
        node = data
        for part in tables:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError("override keys conflict", where=f"{_OVERRIDES} [{key}]",
                                expected=f"'{part}' as a table", found="a value set for it too")
        if isinstance(node.get(leaf), dict):
            raise UserError("override keys conflict", where=f"{_OVERRIDES} [{key}]",
                            expected=f"'{key}' as a value", found="keys set inside it too")
        # a Path is what Python code holds for a path; TOML and TrainConfig say str
        node[leaf] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return data
