"""BaseTrainer: each method of the old hook contract does what it says, as a view over fit.

(Same weights and history as fit: tests/test_migrate.py, for native and old-style recipes.)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import old_trainers as ot
import pytest
import torch
from torch import nn

from engine import fit
from engine.adapter import BaseTrainer
from engine.core.errors import UserError
from engine.io.checkpoint import load


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained adapter shared by the read-and-write tests (training is the slow part)."""
    run_dir = tmp_path_factory.mktemp("adapter") / "run"
    trainer = BaseTrainer(ot.native_tuple, ot.native_cfg(), run_dir=run_dir, name="tuple")
    trainer.train()
    return trainer


def manual_val_loss(model: nn.Module, cfg) -> float:
    """The mean validation MSE over samples, computed by hand."""
    loader = ot._loaders(cfg, ot.TensorDataset).val
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += nn.functional.mse_loss(model(x), y).item() * len(x)
            n += len(x)
    return total / n


def test_before_training_hooks_act_on_the_built_recipe(tmp_path):
    """history is empty; device, model, validate and compute_loss work on the untrained model
    built as fit builds it (same seed: same initial weights as fit's)."""
    cfg = ot.native_cfg()
    trainer = BaseTrainer(ot.native_tuple, cfg, run_dir=tmp_path / "run")
    assert all(values == [] for values in trainer.history.values())   # no validation yet
    assert trainer.device == torch.device("cpu")
    torch.manual_seed(cfg.train.seed)
    fresh = ot.native_tuple.build_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 trainer.model.state_dict().values(), strict=True))
    assert trainer.validate() == pytest.approx(manual_val_loss(trainer.model, cfg), rel=1e-6)
    x, y = next(iter(ot._loaders(cfg, ot.TensorDataset).train))
    expected = nn.functional.mse_loss(trainer.model(x), y)
    loss = trainer.compute_loss((x, y))
    assert loss.requires_grad and torch.allclose(loss, expected)
    assert torch.allclose(trainer._forward_batch((x, y)), expected)
    assert trainer.config is cfg


def test_train_returns_the_history_and_writes_the_run(trained):
    history = trained.history
    assert history["epoch"] == [0, 1, 2] and len(history["val_loss"]) == 3
    for name in ("config.toml", "metrics.json", "model.pt", "checkpoints/best.pt",
                 "checkpoints/last.pt", "metrics.png", "train.log"):
        assert (trained.run_dir / name).is_file(), name
    assert json.loads((trained.run_dir / "metrics.json").read_text())["recipe"] == "tuple"


def test_validate_after_training_is_the_best_validation(trained):
    """The model holds the best weights: one validation pass gives the best val_loss again."""
    best = min(trained.history["val_loss"])
    assert trained.validate() == best
    assert manual_val_loss(trained.model, trained.cfg) == pytest.approx(best, rel=1e-6)


def test_paths(trained):
    assert trained.get_model_save_path() == trained.run_dir / "model.pt"
    assert trained.get_run_file_path("notes.txt") == trained.run_dir / "notes.txt"


def test_save_checkpoint_writes_the_runs_checkpoint_files(trained):
    """is_best writes best.pt, model.pt and last.pt as the loop does; otherwise only last.pt.
    The loop state says `epoch + 1` epochs done and loads with weights_only=True."""
    folder = trained.run_dir / "checkpoints"
    (folder / "best.pt").unlink()
    path = trained.save_checkpoint(4, is_best=False)
    assert path == folder / "last.pt" and not (folder / "best.pt").exists()
    data = load(path)
    assert data["recipe"] == "tuple" and data["loop"]["epoch"] == 5
    assert data["loop"]["history"] == trained.history
    trained.save_checkpoint(2, is_best=True)
    best = load(folder / "best.pt")
    assert best["loop"]["epoch"] == 3
    for key, value in trained.model.state_dict().items():
        assert torch.equal(best["model"][key], value)


def test_save_model_writes_the_current_weights(trained):
    (trained.run_dir / "model.pt").unlink()
    path = trained.save_model()
    saved = torch.load(path, weights_only=True)
    state = trained.model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_save_metrics_and_save_metrics_to_file(trained):
    for method in (trained.save_metrics, trained.save_metrics_to_file):
        (trained.run_dir / "metrics.json").unlink()
        data = json.loads(method().read_text())
        assert data["recipe"] == "tuple" and data["run_id"] == trained.run_dir.name
        assert data["status"] == "completed" and data["history"] == trained.history
        i = trained.history["val_loss"].index(min(trained.history["val_loss"]))
        assert data["best"] == {"epoch": trained.history["epoch"][i],
                                "val_loss": trained.history["val_loss"][i]}


def test_plot_metrics_writes_a_png(trained):
    (trained.run_dir / "metrics.png").unlink()
    path = trained.plot_metrics()
    assert path == trained.run_dir / "metrics.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar():
    trainer = BaseTrainer(ot.native_tuple, ot.native_cfg())
    with pytest.raises(UserError, match="init_progress_bar"):
        trainer.update_progress_bar()
    out = io.StringIO()
    bar = trainer.init_progress_bar(10, "epoch 1/3", file=out, disable=False)
    trainer.update_progress_bar()
    trainer.update_progress_bar(3, loss=0.5)
    assert (bar.total, bar.n, bar.desc) == (10, 4, "epoch 1/3")
    bar.refresh()
    assert "loss=0.5" in out.getvalue()


def test_check_early_stopping_follows_the_loops_rule():
    """Patience 2: two validations in a row without beating the best by more than min_delta;
    an improvement resets the count; patience 0 never stops."""
    cfg = ot.native_cfg(early_stopping_patience=2, early_stopping_min_delta=0.1)
    trainer = BaseTrainer(ot.native_tuple, cfg)
    losses = [1.0, 0.5, 0.45, 0.6, 0.3, 0.3, 0.25]
    assert [trainer.check_early_stopping(v) for v in losses] == \
        [False, False, False, True, False, False, True]
    never = BaseTrainer(ot.native_tuple, ot.native_cfg())
    assert not any(never.check_early_stopping(v) for v in [1.0] * 10)


def test_default_run_dir_is_new_under_output_dir_and_a_second_train_gets_another(tmp_path):
    cfg = ot.native_cfg(output_dir=str(tmp_path), epochs=1)
    trainer = BaseTrainer(ot.native_tuple, cfg)
    trainer.train()
    first = trainer.run_dir
    assert first.parent == tmp_path / "models" / "native_tuple" / "runs"
    assert (first / "metrics.json").is_file()
    trainer.train()
    assert trainer.run_dir != first and (trainer.run_dir / "metrics.json").is_file()


# --- from_registry -----------------------------------------------------------------------------

@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "recipes.toml"
    path.write_text('[native]\nrecipe = "old_trainers:native_tuple"\n\n[native.train]\n'
                    'epochs = 5\ndevice = "cpu"\n\n'
                    '[old_loss]\nrecipe = "old_trainers:old_loss_recipe"\n')
    return path


def test_from_registry_layers_overrides_on_the_entry(registry, tmp_path):
    trainer = BaseTrainer.from_registry("native", {"train.epochs": 1, "train.batch_size": 8,
                                                   "train.output_dir": tmp_path / "out"},
                                        recipes=registry)
    assert trainer.name == "native"
    assert (trainer.cfg.train.epochs, trainer.cfg.train.batch_size) == (1, 8)
    assert trainer.cfg.train.device == "cpu" and trainer.cfg.train.output_dir == \
        str(tmp_path / "out")
    history = trainer.train()
    assert history["epoch"] == [0]
    assert trainer.run_dir.parent == tmp_path / "out" / "models" / "native" / "runs"


def test_from_registry_with_an_old_style_trainer(registry, tmp_path):
    """An old trainer registered through recipe_from_trainer, run through the old contract."""
    trainer = BaseTrainer.from_registry("old_loss", {"train.epochs": 1, "trainer.hidden_dim": 4},
                                        recipes=registry, run_dir=tmp_path / "run")
    assert trainer.model[0].out_features == 4
    ref = fit(ot.native_tuple, ot.NativeConfig(train=ot.native_cfg(epochs=1).train,
                                               model=ot.ModelConfig(hidden_dim=4)))
    assert trainer.train() == ref.history


@pytest.mark.parametrize("overrides, message", [
    ({"train.epochs": "2"}, "wrong type for config key 'train.epochs'"),
    ({"train.epocs": 2}, "unknown config key 'train.epocs'"),
    ({"train.epochs": 0}, "out of range for 'train.epochs'"),
    ({"train..epochs": 2}, "invalid override key"),
    ({"train": 1, "train.epochs": 2}, "override keys conflict"),
    ({"train.epochs": 2, "train": 1}, "override keys conflict"),
])
def test_from_registry_refuses_bad_overrides(registry, overrides, message):
    """Overrides are checked like --set: types, names (with a hint), ranges, key syntax."""
    with pytest.raises(UserError) as err:
        BaseTrainer.from_registry("native", overrides, recipes=registry)
    assert message in err.value.what
    if "epocs" in message:
        assert err.value.hint == "did you mean 'epochs'?"
        assert "from_registry overrides" in err.value.where


def test_a_subclass_overriding_a_loop_hook_is_refused_not_ignored(tmp_path):
    """train() runs fit, which calls no hook of the subclass: an overridden compute_loss would
    be skipped without a word, so train() refuses it, naming the hooks, and writes nothing."""

    class MyTrainer(BaseTrainer):
        def compute_loss(self, batch):
            return torch.tensor(0.0, requires_grad=True)

        def plot_metrics(self):
            return None

    trainer = MyTrainer(ot.native_tuple, ot.native_cfg(epochs=1), run_dir=tmp_path / "run")
    with pytest.raises(UserError) as err:
        trainer.train()
    assert "MyTrainer overrides hooks that BaseTrainer.train() does not call" in err.value.what
    assert err.value.found == "overrides compute_loss, plot_metrics"
    assert "recipe_from_trainer" in err.value.hint
    assert not (tmp_path / "run").exists()


def test_a_subclass_with_its_own_train_keeps_its_hooks(tmp_path):
    """A subclass that adds methods, or writes its own train() over the hooks, is left alone."""

    class Extra(BaseTrainer):
        def summary(self) -> str:
            return self.name

    history = Extra(ot.native_tuple, ot.native_cfg(epochs=1), run_dir=tmp_path / "run").train()
    assert len(history["epoch"]) == 1
