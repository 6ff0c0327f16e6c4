"""Settings accepted and ignored (issue 14): a builder setting (train.warmup_steps, momentum,
...) set away from its default that none of the recipe's builders reads is a user error, for
every pairing of the engine's optimizer and schedule builders; the builders still get a config
that behaves like the real one (attrs.evolve, equality, pickling)."""

from __future__ import annotations

import itertools
import pickle

import attrs
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Loaders, Recipe, TrainConfig, UserError, UserErrors, optimizers, schedules
from engine.cli import main
from engine.core import reads
from engine.core.building import build_objects
from engine.core.distributed import World

CPU = torch.device("cpu")
OTHER = {"warmup_steps": 3, "step_size": 2, "gamma": 0.5, "momentum": 0.5, "min_lr": 1e-5,
         "lr_decay_factor": 0.3, "lr_patience": 4, "weight_decay": 0.01}
READ_BY = {  # what each of the engine's builders reads, by its documentation
    optimizers.adam: {"weight_decay"}, optimizers.adamw: {"weight_decay"},
    optimizers.sgd_nesterov: {"weight_decay", "momentum"},
    schedules.plateau_on_val_loss: {"lr_decay_factor", "lr_patience"},
    schedules.warmup_cosine: {"warmup_steps", "min_lr"},
    schedules.step_decay: {"step_size", "gamma"}, None: set()}


@attrs.frozen
class Cfg:
    train: TrainConfig = attrs.Factory(lambda: TrainConfig(device="cpu", epochs=2))


def build_loaders(cfg) -> Loaders:
    x = torch.randn(16, 3)
    ds = TensorDataset(x, x.sum(1))
    return Loaders(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))


def forward(model, batch, ctx):
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(-1), y)


def make_recipe(build_optimizer, build_scheduler) -> Recipe:
    return Recipe("pairing", Cfg, lambda cfg: nn.Linear(3, 1), build_loaders, forward,
                  build_optimizer=build_optimizer, build_scheduler=build_scheduler)


PAIRS = list(itertools.product(
    [optimizers.adam, optimizers.adamw, optimizers.sgd_nesterov],
    [schedules.plateau_on_val_loss, schedules.warmup_cosine, schedules.step_decay, None]))


@pytest.mark.parametrize("opt, sched", PAIRS,
                         ids=[f"{o.__name__}-{getattr(s, '__name__', 'none')}" for o, s in PAIRS])
def test_each_setting_is_refused_exactly_when_no_builder_reads_it(opt, sched):
    """For every optimizer x schedule pairing and every builder setting: build_objects builds
    when one of the two reads the setting, and raises a UserError naming it otherwise."""
    recipe = make_recipe(opt, sched)
    read = READ_BY[opt] | READ_BY[sched]
    for key, value in OTHER.items():
        cfg = Cfg(train=attrs.evolve(Cfg().train, **{key: value}))
        if key in read:
            build_objects(recipe, cfg, World(), CPU)
            continue
        with pytest.raises(UserError) as caught:
            build_objects(recipe, cfg, World(), CPU)
        text = caught.value.render()
        assert f"train.{key} is set, but none of the recipe's builders reads it" in text
        assert f"{key} = {value!r}" in text and opt.__name__ in text
        readers = [f"{b.__module__.removeprefix('engine.core.')}.{b.__name__}"
                   for b in READ_BY if b is not None and key in READ_BY[b]]
        assert f"train.{key} is read by {' and '.join(readers)}" in text


def test_defaults_and_several_unread_settings_at_once():
    """The defaults build; two unread settings are two errors."""
    recipe = make_recipe(optimizers.adam, schedules.plateau_on_val_loss)
    build_objects(recipe, Cfg(), World(), CPU)
    cfg = Cfg(train=attrs.evolve(Cfg().train, warmup_steps=500, momentum=0.5))
    with pytest.raises(UserErrors) as caught:
        build_objects(recipe, cfg, World(), CPU)
    assert [e.found for e in caught.value.errors] == ["warmup_steps = 500 (default 0)",
                                                      "momentum = 0.5 (default 0.9)"]


def test_builders_get_a_config_that_behaves_like_the_real_one():
    """A builder may evolve, compare, hash and pickle cfg.train and cfg; what it reads through
    an evolved copy is taken as read (the copy's fields are read by evolve)."""
    seen = {}
    cfg = Cfg(train=attrs.evolve(Cfg().train, momentum=0.5))

    def evolving_optimizer(view, model):
        train = attrs.evolve(view.train, learning_rate=0.5)
        seen.update(is_train=isinstance(view.train, TrainConfig), equal=view.train == cfg.train,
                    hashes=hash(view.train) == hash(cfg.train), cfg_equal=view == cfg,
                    pickled=pickle.loads(pickle.dumps(view)) == cfg,
                    asdict=attrs.asdict(view.train) == attrs.asdict(cfg.train))
        return optimizers.sgd_nesterov(attrs.evolve(view, train=train), model)

    recipe = make_recipe(evolving_optimizer, schedules.step_decay)
    _, _, optimizer, _ = build_objects(recipe, cfg, World(), CPU)
    assert optimizer.param_groups[0]["lr"] == 0.5 and optimizer.param_groups[0]["momentum"] == 0.5
    assert seen == dict.fromkeys(seen, True) and len(seen) == 6


def test_recording_train_records_reads():
    """The view's train notes each field read; a config that is not attrs is handed on as it
    is, with nothing recorded."""
    view, read = reads.recording(Cfg())
    assert read == set()
    assert view.train.momentum == 0.9 and read == {"momentum"}
    plain = object()
    assert reads.recording(plain) == (plain, None)


def test_run_and_check_refuse_an_unread_setting(tmp_path, monkeypatch, capsys):
    """`run autoencoder --set train.warmup_steps=500` is exit 2 before any folder; `check`
    prints a FAIL line `settings` and exits 2."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    argv = ["autoencoder", "--recipes", str(root / "recipes.toml"), "--set",
            "train.warmup_steps=500", "--set", "train.epochs=1", "--set", "data.num_models=64"]
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert "train.warmup_steps is set, but none of the recipe's builders reads it" in err
    assert "schedules.warmup_cosine" in err and err.count("error:") == 1
    assert not (tmp_path / "artifacts").exists()
    assert main(["check", *argv]) == 2
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and " settings " in line for line in out.splitlines())
