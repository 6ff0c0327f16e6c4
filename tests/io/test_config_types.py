"""Config classes whose annotations are strings (`from __future__ import annotations`) defined
inside a function (issue 14): resolved through their defaults, or refused with exit 2 before
any folder exists; a value config.toml cannot hold is refused the same way; and an error in
the engine's own writers is not blamed on the recipe."""

from __future__ import annotations

import textwrap

import pytest
import tomllib

from engine.cli import main

MODULE = '''
from __future__ import annotations

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine import Loaders, Recipe, TrainConfig


def make():
    @attrs.frozen
    class ModelCfg:
        width: int = 4

    @attrs.frozen
    class Cfg:
        train: TrainConfig = attrs.Factory(lambda: TrainConfig(epochs=1, device="cpu"))
        model: MODEL_ANNOTATION
        EXTRA

    def build_loaders(cfg):
        x = torch.randn(16, 3)
        ds = TensorDataset(x, x.sum(1))
        return Loaders(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))

    def forward(model, batch, ctx):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)

    return Recipe("local", Cfg, lambda cfg: torch.nn.Linear(3, 1), build_loaders, forward)


recipe = make()
'''


def project(tmp_path, monkeypatch, module: str, annotation: str, extra: str = "pass"):
    text = MODULE.replace("MODEL_ANNOTATION", annotation).replace("EXTRA", extra)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    registry = tmp_path / "recipes.toml"
    registry.write_text(f'[local]\nrecipe = "{module}:recipe"\n')
    return registry


def test_local_classes_resolve_through_their_defaults(tmp_path, monkeypatch, capsys):
    """`model: ModelCfg = attrs.Factory(ModelCfg)` inside a function: `run` trains, writes a
    config.toml that `--config` takes back, and `--set model.width` is type-checked."""
    registry = project(tmp_path, monkeypatch, "cfg_local_ok",
                       "ModelCfg = attrs.Factory(ModelCfg)")
    assert main(["run", "local", "--recipes", str(registry), "--set", "model.width=7"]) == 0
    (run,) = (tmp_path / "artifacts" / "models" / "local" / "runs").iterdir()
    written = tomllib.loads((run / "config.toml").read_text())
    assert written["model"] == {"width": 7}
    capsys.readouterr()
    assert main(["run", "local", "--recipes", str(registry), "--set", "model.width=2.5"]) == 2
    assert "wrong type for config key 'model.width'" in capsys.readouterr().err


def test_unresolvable_annotation_is_exit_2_before_any_folder(tmp_path, monkeypatch, capsys):
    """A local class no default holds (`ModelCfg | None = None`): exit 2 naming the class and
    the field, no traceback, no artifacts folder; `check` fails on it the same way."""
    registry = project(tmp_path, monkeypatch, "cfg_local_bad", "ModelCfg | None = None")
    assert main(["run", "local", "--recipes", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "the config class's annotations cannot be resolved" in err
    assert "make.<locals>.Cfg, field 'model'" in err and "ModelCfg" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "artifacts").exists()
    assert main(["check", "local", "--recipes", str(registry)]) == 2
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and " config " in line for line in out.splitlines()), out


def test_a_value_toml_cannot_hold_is_exit_2_before_any_folder(tmp_path, monkeypatch, capsys):
    """A frozenset field: exit 2 naming the key (it was a failed run blamed on the recipe)."""
    registry = project(tmp_path, monkeypatch, "cfg_local_set",
                       "ModelCfg = attrs.Factory(ModelCfg)",
                       'tags: frozenset[str] = frozenset({"a"})')
    assert main(["run", "local", "--recipes", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "config key 'tags' cannot be written to config.toml" in err
    assert "frozenset" in err and "recipe 'local'" not in err
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("noticed", ["at a checkpoint", "at the end of fit"])
def test_a_run_file_that_cannot_be_written_fails_the_run_naming_it(tmp_path, monkeypatch,
                                                                   noticed):
    """config.toml cannot be written (a folder stands in its place): the run's writer writes
    it off the training path, and the run fails at its next checkpoint, naming config.toml
    (not its temporary name) and the OS error, not blaming the recipe. A slow writer thread
    may finish that write only after the last checkpoint: the end of fit says the same."""
    import json

    import resume_recipe as rr

    from engine import fit
    from engine.io.checkpointer import RunDirCheckpointer
    if noticed == "at the end of fit":   # no checkpoint looks: only fit's last flush sees it
        monkeypatch.setattr(RunDirCheckpointer, "_check", lambda self: None)
    run_dir = tmp_path / "run"
    (run_dir / "config.toml").mkdir(parents=True)
    result = fit(rr.recipe, rr.make_cfg("train.epochs=2"), run_dir=run_dir)
    assert result.status == "failed"
    message = result.error["message"]
    assert message == (f"a file of the run could not be written: {run_dir / 'config.toml'}: "
                       "Is a directory"), message
    assert "recipe" not in message
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert not list(run_dir.glob("*.tmp"))
