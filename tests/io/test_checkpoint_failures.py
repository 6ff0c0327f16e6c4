"""A checkpoint that cannot be written ends the run (failed, naming the path and the OS
error) with the files from before intact; a checkpoint its own resume would refuse fails the
run at the first write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from engine import Event, Loaders, Recipe, Schedule, TrainConfig, fit, listens_to


@attrs.frozen
class Cfg:
    train: TrainConfig = TrainConfig(epochs=4, batch_size=8, device="cpu",
                                     early_stopping_patience=0)


def _loaders(cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g)
    return Loaders(DataLoader(TensorDataset(x, y), 8), DataLoader(TensorDataset(x, y), 16))


def _forward(model, batch, ctx):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


RECIPE = Recipe(name="ckpt", config=Cfg, build_model=lambda cfg: torch.nn.Linear(4, 1),
                build_loaders=_loaders, forward_batch=_forward)


@pytest.fixture(autouse=True)
def _inline_plots(monkeypatch):
    monkeypatch.setenv("ENGINE_PLOTS", "inline")
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)


@pytest.mark.parametrize("writes", ["in the background", "waited for"])
def test_a_failed_checkpoint_write_fails_the_run_and_keeps_earlier_files(tmp_path: Path, writes):
    """After epoch 2's files are on disk the checkpoints folder is moved away and a file takes
    its name: the next write fails (NotADirectoryError). The run ends failed naming the path
    and the OS error; metrics.json says failed and keeps its validations; the moved files load
    and hold epoch 2. Both with the run's background writer and with writes waited for (an
    observer of CHECKPOINT_WRITTEN)."""
    run_dir = tmp_path / "run"

    @listens_to(Event.EPOCH_END)
    def break_folder(event, state):
        if state.epoch == 2:
            if state.run.files is not None:
                state.run.files.flush()   # epoch 2's files are whole on disk first
            shutil.move(run_dir / "checkpoints", run_dir / "checkpoints.before")
            (run_dir / "checkpoints").write_text("not a folder")

    @listens_to(Event.CHECKPOINT_WRITTEN)
    def heard(event, state):
        pass

    extra = (heard,) if writes == "waited for" else ()
    result = fit(RECIPE, Cfg(), run_dir=run_dir, callbacks=(break_folder, *extra))
    assert result.status == "failed"
    assert "could not be written" in result.error["message"]
    assert str(run_dir / "checkpoints") in result.error["message"]
    assert "Not a directory" in result.error["message"]
    assert result.error["epoch"] >= 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and len(metrics["history"]["epoch"]) >= 3
    last = torch.load(run_dir / "checkpoints.before" / "last.pt", weights_only=True)
    assert last["loop"]["epoch"] == 2
    model_before = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(model_before) == {"weight", "bias"}


class _ObjectState:
    """A scheduler whose state holds a Python object: torch.load(weights_only=True) refuses it."""

    def step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"where": Path("/tmp")}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_an_unloadable_checkpoint_fails_the_run_at_the_first_write(tmp_path: Path):
    """No checkpoint is written that the run's own resume would refuse: the first write fails
    the run, saying why, and no last.pt exists."""
    recipe = attrs.evolve(RECIPE, build_scheduler=lambda cfg, opt: Schedule(_ObjectState(),
                                                                             "epoch"))
    result = fit(recipe, Cfg(), run_dir=tmp_path / "run")
    assert result.status == "failed"
    assert "weights_only=True" in result.error["message"]
    assert "could never be resumed" in result.error["message"]
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(min_size=0, max_size=512))
def test_any_bytes_are_a_checkpoint_or_a_user_error(tmp_path_factory, junk):
    """Whatever bytes a file holds, loading it as a checkpoint gives a UserError naming it,
    never another exception (random bytes once reached the unpickler's KeyError)."""
    from engine import UserError
    from engine.io.checkpoint import load

    path = tmp_path_factory.mktemp("junk") / "last.pt"
    path.write_bytes(junk)
    with pytest.raises(UserError) as info:
        load(path)
    assert str(path) in info.value.render()
