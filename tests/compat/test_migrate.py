"""recipe_from_trainer: old-style trainers (tests/old_trainers.py) run by fit like recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import old_trainers as ot
import pytest
import torch

from engine import fit
from engine.adapter import BaseTrainer
from engine.compat.migrate import recipe_from_trainer
from engine.compat.old_config import TRAIN_FIELDS, old_config
from engine.core.config import TrainConfig
from engine.core.errors import UserError
from engine.io.layering import build_config, parse_set, to_toml

ROOT = Path(__file__).resolve().parents[2]

# (old-style recipe, the same model as a native recipe, its native config)
PATTERNS = {
    "compute_loss": (ot.old_loss_recipe, ot.native_tuple, ot.native_cfg()),
    "_forward_batch dict batch": (ot.old_dict_recipe, ot.native_dict,
                                  ot.native_cfg(gradient_clip_value=0.0)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: one thread is faster and immune to a busy second core
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_same_seed_same_weights_through_fit_adapter_and_old_trainer(pattern, tmp_path):
    """fit(native), BaseTrainer(native).train(), fit(old trainer) and BaseTrainer(old trainer)
    give bitwise the same weights and history for the same seed."""
    old, native, cfg = PATTERNS[pattern]
    ref = fit(native, cfg)
    trainer = BaseTrainer(native, cfg, run_dir=tmp_path / "native")
    history = trainer.train()
    migrated = fit(old, old.config())
    old_trainer = BaseTrainer(old, old.config(), run_dir=tmp_path / "old")
    old_history = old_trainer.train()
    assert len(ref.history["epoch"]) == 3
    assert ref.history == history == migrated.history == old_history
    assert same_weights(ref.model, trainer.model)
    assert same_weights(ref.model, migrated.model)
    assert same_weights(ref.model, old_trainer.model)
    if pattern.startswith("_forward_batch"):   # the dict's extra tensors become val_ metrics
        assert "val_mae" in migrated.history


def test_config_mapping_regression_config():
    """BaseTrainerConfig-style names map onto TrainConfig; None means off/auto; a Path output
    dir becomes a string; the other fields form [trainer]; the old config round-trips."""
    cfg = ot.old_loss_recipe.config()
    assert isinstance(cfg.train, TrainConfig)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate) == (3, 16, 5e-3)
    assert cfg.train.early_stopping_patience == 0          # None: early stopping off
    assert cfg.train.output_dir == "artifacts" and cfg.train.seed == 7
    assert attrs.asdict(cfg.trainer) == {"hidden_dim": 16, "samples": 96}
    spec_cfg = old_config(_spec(ot.old_loss_recipe), cfg)
    assert spec_cfg == ot.RegressionConfig()               # None and Path come back as they were
    assert "[trainer]" in to_toml(cfg)


def test_config_mapping_other_names_and_a_list_field():
    cfg = ot.old_dict_recipe.config()
    assert cfg.train.learning_rate == 5e-3                   # lr
    assert cfg.train.gradient_clip_value == 0.0              # grad_clip None: off
    assert cfg.train.lr_decay_factor == 0.5                  # lr_factor
    assert cfg.trainer.widths == [16]
    assert old_config(_spec(ot.old_dict_recipe), cfg) == ot.DictConfig()
    assert TRAIN_FIELDS["epochs"][0] == "num_epochs"


def test_overrides_reach_the_old_trainer_and_keep_other_old_defaults():
    """A [train] or [trainer] value set in a layer is what the old __init__ receives; setting one
    key keeps the other old defaults; types are checked as for any recipe."""
    recipe = ot.old_loss_recipe
    cfg = build_config(recipe.config, [parse_set("train.learning_rate=0.02"),
                                       parse_set("trainer.hidden_dim=5")])
    assert cfg.train.batch_size == 16 and cfg.train.seed == 7     # old defaults kept
    model = recipe.build_model(cfg)
    recipe.build_loaders(cfg)
    optimizer = recipe.build_optimizer(cfg, model)
    assert model[0].out_features == 5
    assert optimizer.param_groups[0]["lr"] == 0.02
    assert recipe.build_scheduler(cfg, optimizer).interval == "validation"
    with pytest.raises(UserError, match="wrong type for config key 'trainer.hidden_dim'"):
        build_config(recipe.config, [parse_set("trainer.hidden_dim=1.5")])


def test_scheduler_intervals_and_none(tmp_path):
    """ReduceLROnPlateau steps per validation, other schedulers per epoch, None: constant."""

    class StepLRTrainer(ot.RegressionTrainer):
        def __init__(self, config: ot.RegressionConfig | None = None) -> None:
            super().__init__(config)
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 1, gamma=0.5)

    class NoScheduler(ot.RegressionTrainer):
        def __init__(self, config: ot.RegressionConfig | None = None) -> None:
            super().__init__(config)
            self.scheduler = None

    recipe = recipe_from_trainer(StepLRTrainer)
    assert recipe.name == "step_lr_trainer"
    result = fit(recipe, recipe.config())
    assert result.history["learning_rate"] == [5e-3, 2.5e-3, 1.25e-3]
    recipe = recipe_from_trainer(NoScheduler)
    assert fit(recipe, recipe.config()).history["learning_rate"] == [5e-3] * 3


def test_built_trainer_is_trained_in_place_and_refuses_a_config_it_was_not_built_with():
    trainer = ot.RegressionTrainer()
    recipe = recipe_from_trainer(trainer)
    assert recipe.name == "regression_trainer"
    result = fit(recipe, build_config(recipe.config, [parse_set("train.epochs=1")]))
    assert result.model is trainer.model and len(result.history["epoch"]) == 1
    with pytest.raises(UserError) as err:
        fit(recipe, build_config(recipe.config, [parse_set("train.learning_rate=0.1")]))
    assert "learning_rate = 0.1" in err.value.found and "register the class" in err.value.hint


# --- mistakes ----------------------------------------------------------------------------------

def test_missing_hook_is_named_at_conversion():
    with pytest.raises(UserError) as err:
        recipe_from_trainer(ot.NoHook)
    assert "compute_loss(batch) or _forward_batch(batch)" in err.value.what


def test_missing_attribute_of_a_built_trainer_is_named():
    trainer = ot.RegressionTrainer()
    del trainer.optimizer
    with pytest.raises(UserError) as err:
        recipe_from_trainer(trainer)
    assert "has no optimizer" in err.value.what and "optimizer" in err.value.found


def test_missing_attribute_of_a_factory_trainer_is_named_when_fit_builds_it():
    with pytest.raises(UserError) as err:
        fit(ot.no_val_loader_recipe, ot.no_val_loader_recipe.config())
    assert "NoValLoader" in err.value.what and "val_loader" in err.value.what


def test_config_that_is_not_a_dataclass_and_an_unannotated_factory():
    class Plain:
        def __init__(self, config) -> None:
            self.config = config

        def compute_loss(self, batch):
            return batch

    with pytest.raises(UserError, match="cannot tell which config class") as err:
        recipe_from_trainer(Plain)
    assert "config=MyConfig" in err.value.hint
    with pytest.raises(UserError, match="is not a dataclass"):
        recipe_from_trainer(Plain, config=dict)


def run_engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_2_naming_the_missing_attribute(tmp_path, capsys, monkeypatch):
    """Registered in recipes.toml: a trainer missing an attribute is a user error (exit 2) that
    names it, whether it is found at import (a subprocess, as a user runs it) or when the run
    builds the trainer (the CLI's main in this process)."""
    (tmp_path / "broken_old.py").write_text(
        "from old_trainers import RegressionTrainer\n"
        "from engine.compat.migrate import recipe_from_trainer\n"
        "trainer = RegressionTrainer()\n"
        "del trainer.scheduler\n"
        "recipe = recipe_from_trainer(trainer)\n")
    (tmp_path / "recipes.toml").write_text(
        '[broken]\nrecipe = "broken_old:recipe"\n\n'
        '[no_val]\nrecipe = "old_trainers:no_val_loader_recipe"\n')
    proc = run_engine(tmp_path, "run", "broken", "--recipes", "recipes.toml")
    assert proc.returncode == 2, proc.stderr
    assert "has no scheduler" in proc.stderr and "Traceback" not in proc.stderr

    from engine.cli import main
    monkeypatch.chdir(tmp_path)
    code = main(["run", "no_val", "--recipes", "recipes.toml", "--output-dir", "out"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "has no val_loader" in err and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("metrics.json"))


def _spec(recipe):
    """The mapping a recipe from recipe_from_trainer closes over (for old_config)."""
    from engine.compat.old_config import spec_of as make_spec
    cls = ot.RegressionConfig if recipe is ot.old_loss_recipe else ot.DictConfig
    return make_spec(cls, None, cls.__name__)


def test_metrics_json_of_a_migrated_run(tmp_path):
    result = fit(ot.old_dict_recipe, ot.old_dict_recipe.config(), run_dir=tmp_path / "run",
                 name="old_dict")
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert data["recipe"] == "old_dict" and data["status"] == "completed"
    assert data["history"]["val_mae"] == result.history["val_mae"]


def test_engine_check_passes_for_a_migrated_trainer(tmp_path, capsys, monkeypatch):
    """`engine check` trains a copy of the model: the old hook runs over that copy too."""
    from engine.cli import main
    (tmp_path / "recipes.toml").write_text('[old_dict]\nrecipe = "old_trainers:old_dict_recipe"\n')
    monkeypatch.chdir(tmp_path)
    code = main(["check", "old_dict", "--recipes", "recipes.toml"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert " 0 FAIL" in out and "\nok    overfit" in out


def test_trainers_of_finished_runs_are_not_kept_for_ever():
    """Each fit builds a trainer; only the last few stay alive with the recipe (no leak)."""
    import gc
    import weakref

    made: weakref.WeakSet = weakref.WeakSet()

    class Counted(ot.RegressionTrainer):
        def __init__(self, config: ot.RegressionConfig | None = None) -> None:
            super().__init__(config)
            made.add(self)

    recipe = recipe_from_trainer(Counted)
    cfg = build_config(recipe.config, [parse_set("train.epochs=1")])
    results = [fit(recipe, cfg) for _ in range(6)]
    gc.collect()
    assert len(made) <= 4
    # a model whose trainer is gone still gets its loss computed (over a copy of a live one)
    first = results[0].model
    x, y = next(iter(ot.RegressionTrainer().val_loader))
    loss = recipe.forward_batch(first, (x, y), _ctx())
    assert torch.allclose(loss, torch.nn.functional.mse_loss(first(x), y))


def _ctx():
    from engine import StepContext
    return StepContext(torch.device("cpu"), False, 0, 0)


def test_old_defaults_outside_trainconfig_are_refused_naming_the_old_field():
    """Old values are checked like a [train] table: every mistake, named by the old field."""
    import dataclasses

    from engine.core.errors import UserErrors

    @dataclasses.dataclass
    class Bad:
        lr_factor: float = 1.5
        patience: int = -1

    with pytest.raises(UserErrors) as err:
        recipe_from_trainer(ot.RegressionTrainer, config=Bad)
    wheres = sorted(e.where.rsplit(".Bad.", 1)[1] for e in err.value.errors)
    assert wheres == ["lr_factor (as train.lr_decay_factor)",
                      "patience (as train.early_stopping_patience)"]


def test_a_factory_function_is_called_with_the_old_config_for_each_run():
    def make_trainer(config: ot.DictConfig) -> ot.DictTrainer:
        return ot.DictTrainer(config)

    recipe = recipe_from_trainer(make_trainer, name="made")
    assert recipe.name == "made" and recipe.config().trainer.widths == [16]
    first, second = (fit(recipe, recipe.config()) for _ in range(2))
    assert first.model is not second.model
    assert first.history == second.history == fit(ot.old_dict_recipe,
                                                  ot.old_dict_recipe.config()).history
    broken = recipe_from_trainer(lambda config: object(), config=ot.DictConfig)
    with pytest.raises(UserError, match="has no config and no model") as err:
        fit(broken, broken.config())
    assert err.value.what.endswith("no compute_loss(batch) or _forward_batch(batch)")


# --- old trainers whose attributes or hook results have the wrong type ------------------------

class _StringModel(ot.RegressionTrainer):
    def __init__(self, config: ot.RegressionConfig) -> None:
        super().__init__(config)
        self.model = "net"


class _StringScheduler(ot.RegressionTrainer):
    def __init__(self, config: ot.RegressionConfig) -> None:
        super().__init__(config)
        self.scheduler = "plateau"


class _BadInterval(ot.RegressionTrainer):
    scheduler_interval = "epochs"


@pytest.mark.parametrize("cls, what, hint", [
    (_StringModel, "_StringModel.model is not a torch module", None),
    (_StringScheduler, "_StringScheduler.scheduler is not a learning-rate scheduler", None),
    (_BadInterval, "_BadInterval.scheduler_interval is not an interval", "did you mean 'epoch'?"),
])
def test_wrong_types_of_a_trainers_attributes_are_named(cls, what, hint):
    """A model that is no module, a scheduler that is no scheduler, an unknown interval: a
    UserError naming the trainer's attribute, before training (a string scheduler used to end
    the run as an engine failure at its first step)."""
    recipe = recipe_from_trainer(cls)
    with pytest.raises(UserError) as err:
        fit(recipe, recipe.config())
    assert what in err.value.what
    assert err.value.hint == hint


def test_cli_exit_2_for_a_scheduler_that_is_no_scheduler(tmp_path, capsys, monkeypatch):
    """Through the CLI: exit 2 with the message (it was exit 1, blaming the engine), no
    traceback, no run files."""
    from engine.cli import main
    (tmp_path / "string_sched.py").write_text(
        "from old_trainers import RegressionConfig, RegressionTrainer\n"
        "from engine.compat.migrate import recipe_from_trainer\n"
        "class StringScheduler(RegressionTrainer):\n"
        "    def __init__(self, config: RegressionConfig) -> None:\n"
        "        super().__init__(config)\n"
        "        self.scheduler = 'plateau'\n"
        "recipe = recipe_from_trainer(StringScheduler)\n")
    (tmp_path / "recipes.toml").write_text('[old]\nrecipe = "string_sched:recipe"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["run", "old", "--recipes", "recipes.toml", "--output-dir", "out"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "StringScheduler.scheduler is not a learning-rate scheduler" in err
    assert "found: str 'plateau'" in err and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("metrics.json"))


class _NumberMetric(ot.DictTrainer):
    def _forward_batch(self, batch: dict):
        out = super()._forward_batch(batch)
        return {**out, "mae": out["mae"].item(), "outputs": self.model(batch["inputs"])}


def test_a_metric_given_as_a_number_is_kept_and_a_tensor_batch_left_out():
    """`{"loss": ..., "mae": mae.item()}` (the old way): val_mae is in the history, as with a
    tensor (it used to vanish without a word); a non-scalar tensor is no metric."""
    recipe = recipe_from_trainer(_NumberMetric)
    result = fit(recipe, recipe.config())
    reference = fit(ot.old_dict_recipe, ot.old_dict_recipe.config())
    assert result.history["val_mae"] == pytest.approx(reference.history["val_mae"])
    assert "val_outputs" not in result.history
