"""The sweep's specification: flag parsing, and every bad input refused before anything runs
(exit code 2, one block per mistake, no study directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from engine.cli.main import main
from engine.study import spec as specs
from engine.study import study_toml
from engine.study.checks import value_set

RECIPES = Path(__file__).with_name("recipes.toml")


def test_values_split_at_top_level_commas_only():
    """Commas inside quotes and brackets belong to the value."""
    assert specs.split_values('1e-3,"a,b",[1, 2],x') == ["1e-3", '"a,b"', "[1, 2]", "x"]


def test_grid_values_are_toml_or_one_bare_word():
    """--grid reads values as --set does."""
    assert specs.parse_key_values("--grid", 'model.loss=listnet,"x y",3,1e-3,true,[1, 2]') == (
        "model.loss", ["listnet", "x y", 3, 1e-3, True, [1, 2]])


def test_search_specs_and_objectives_parse():
    """Each SPEC kind gives its Optuna distribution; METRIC alone means min."""
    assert specs.distribution("loguniform:1e-4:1e-2").log
    assert specs.distribution("int:16:256").high == 256
    assert specs.distribution("choice:a,b").choices == ("a", "b")
    assert specs.parse_objective("val_mae") == ("val_mae", "min")
    assert specs.parse_objective("val_ndcg_at_5:max") == ("val_ndcg_at_5", "max")


def test_value_set_round_trips_through_set():
    """A configuration's value is passed to the run exactly (as TOML)."""
    for value in (1e-3, 3, "listnet", True, [1, 2], 0.1 + 0.2):
        assert specs.parse_value("a.b", value_set("a.b", value).split("=", 1)[1], "x") == value


def test_study_toml_round_trip(tmp_path):
    """study.toml holds the whole specification."""
    spec = specs.StudySpec(recipe="tiny", recipes_file="/x/recipes.toml", base={"train": {}},
                           search={"train.learning_rate": "loguniform:1e-4:1e-2"}, trials=5,
                           sampler="random", prune=True, replicate_key="train.seed",
                           replicates=(0, 1), metric="val_mae", direction="max")
    (tmp_path / "study.toml").write_text(tomli_w.dumps({"study_id": "s1",
                                                         **spec.to_toml_dict()}))
    assert study_toml.load(tmp_path) == (spec, "s1")
    grid = specs.StudySpec(recipe="t", recipes_file="r", base={}, grid={"a": [1, 2], "b": [3]})
    assert grid.configurations() == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def _sweep(tmp_path, monkeypatch, capsys, *flags):
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "tiny", "--recipes", str(RECIPES), *flags])
    err = capsys.readouterr().err
    return code, err


BAD = [
    (["--grid", "train.lerning_rate=1e-3,1e-2"], ["unknown config key 'train.lerning_rate'",
                                                  "did you mean 'learning_rate'"]),
    (["--grid", "model.width=2,x,1.5"], ["found: str 'x'", "found: float 1.5"]),
    (["--grid", "model.width"], ["--grid needs KEY=V1,V2"]),
    (["--grid", "model.width=2,2"], ["lists a value twice"]),
    (["--grid", "model.width=2", "--grid", "model.width=3"], ["names a key twice"]),
    (["--search", "train.learning_rate=logu:1:2"], ["unknown search kind 'logu'"]),
    (["--search", "train.learning_rate=loguniform:0:1"], ["positive bounds"]),
    (["--search", "model.width=int:1.5:3"], ["integer bounds"]),
    (["--search", "model.width=int:3:3"], ["range is empty"]),
    (["--search", "train.learning_rate=uniform:-1:1"], ["out of range for 'train.learning_rate'"]),
    (["--search", "train.learning_rate=choice:"], ["choice needs plain values"]),
    (["--seeds", "0"], ["--seeds needs at least one seed"]),
    (["--seeds", "2", "--replicate", "model.width=2,3"], ["--seeds and --replicate together"]),
    (["--replicate", "data.fold=0,1"], ["unknown config key 'data'"]),
    (["--grid", "model.width=2,3", "--search", "train.learning_rate=uniform:0.1:1"],
     ["--grid and --search together"]),
    (["--trials", "3"], ["--trials without --search"]),
    (["--search", "train.learning_rate=uniform:0.1:1", "--trials", "0"],
     ["--trials needs at least one trial"]),
    (["--workers", "0"], ["--workers needs at least one worker"]),
    (["--objective", "val_mea"], ["not a history column", "did you mean 'val_mae'"]),
    (["--objective", "val_mae:up"], ["--objective needs METRIC[:min|max]"]),
    (["--storage", "sqlite:///x.db", "--workers", "2"],
     ["SQLite storage is refused for more than one worker", "database is locked"]),
    (["--storage", "mysql://x"], ["unknown storage"]),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], ["the database cannot be reached"]),
    (["--set", "train.epocs=3"], ["unknown config key 'train.epocs'"]),
    (["--grid", "model.width=2,3", "--replicate", "model.width=4,5"],
     ["both a configuration and a replicate"]),
    (["--search", "model.width=choice:8,8"], ["choice lists a value twice"]),
    (["--objective", "val_mae:"], ["--objective needs METRIC[:min|max]"]),
    (["--sampler", "random"], ["--sampler without --search"]),
    (["--seeds", "100000000000"], ["the study is too large", "100,000,000,000 runs"]),
    (["--grid", "model.width=1,2,3,4,5,6,7,8,9,10", "--grid", "train.epochs=1,2,3,4,5,6,7,8,9,10",
      "--grid", "train.batch_size=1,2,3,4,5,6,7,8,9,10", "--seeds", "101"],
     ["the study is too large", "101,000 runs"]),
    (["--storage", "sqlite:///"], ["SQLite storage needs a file"]),
    (["--storage", "sqlite:///no/such/folder/x.db"], ["the SQLite file's folder does not exist"]),
    (["--storage", "sqlite:///."], ["the SQLite file is a folder"]),
]


@pytest.mark.parametrize("flags,messages", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_input_exits_2_with_no_study_directory(tmp_path, monkeypatch, capsys, flags,
                                                   messages):
    """Every mistake: exit code 2, its message, no traceback, no folder made."""
    code, err = _sweep(tmp_path, monkeypatch, capsys, *flags)
    assert code == 2, err
    for message in messages:
        assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()


def test_several_mistakes_are_reported_together(tmp_path, monkeypatch, capsys):
    """One block per mistake, all in one go."""
    code, err = _sweep(tmp_path, monkeypatch, capsys, "--grid", "train.lerning_rate=1,2",
                       "--seeds", "0", "--objective", "val_nope", "--workers", "0")
    assert code == 2
    assert err.count("error: ") == 4
    assert not (tmp_path / "artifacts").exists()


def test_sweep_needs_a_recipe_or_a_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--recipes", str(RECIPES)]) == 2
    assert "NAME, --resume STUDY_DIR or --worker STUDY_DIR" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a study directory" in capsys.readouterr().err
