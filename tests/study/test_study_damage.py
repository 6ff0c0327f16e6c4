"""A study directory damaged after the fact (a torn record, an edited study.toml, a lost
journal): `report` and `sweep --resume` stop with exit code 2 and one message naming the file
and the key, never a traceback, never a report or a resume that quietly skips a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
import tomllib
from helpers import engine

from engine.cli.main import main

RECIPES = Path(__file__).with_name("recipes.toml")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A finished 2 x 2 study (two widths, two seeds, one epoch each)."""
    cwd = tmp_path_factory.mktemp("made")
    done = engine("sweep", "tiny", "--grid", "model.width=1,6", "--seeds", "2", "--set",
                  "train.epochs=1", cwd=cwd, recipes=RECIPES)
    assert done.returncode == 0, done.stderr
    (folder,) = (cwd / "artifacts" / "studies" / "tiny").iterdir()
    return folder


def _edit_toml(study: Path, change) -> None:
    path = study / "study.toml"
    data = tomllib.loads(path.read_text())
    change(data)
    path.write_text(tomli_w.dumps(data))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _pair(study: Path) -> Path:
    return study / "pairs" / "c0000-r000.json"


DAMAGE = {
    "torn pair record": (lambda s: _pair(s).write_text('{"configuration": 0, '),
                         "a study's pair record is damaged", "pairs/c0000-r000.json", "not JSON"),
    "pair record of another pair": (
        lambda s: _edit_json(_pair(s), lambda d: d.update(replicate=1)),
        "a study's pair record is damaged", "c0000-r000.json", "not the pair its name says"),
    "pair record in an unknown state": (
        lambda s: _edit_json(_pair(s), lambda d: d.update(state="finished")),
        "a study's pair record is damaged", "c0000-r000.json", "state = 'finished'"),
    "empty study.toml": (lambda s: (s / "study.toml").write_text(""),
                         "study.toml is empty", "study.toml", "no keys"),
    "study.toml without replicates": (
        lambda s: _edit_toml(s, lambda d: d.pop("replicates")),
        "study.toml is damaged", "study.toml replicates.key", "no such key"),
    "study.toml with an unknown direction": (
        lambda s: _edit_toml(s, lambda d: d["objective"].update(direction="sideways")),
        "study.toml is damaged", "objective.direction", "'sideways'"),
    "study.toml with a storage of nothing": (
        lambda s: _edit_toml(s, lambda d: d.update(storage="garbage")),
        "study.toml is damaged", "study.toml storage", "'garbage'"),
    "study.toml with a numeric id": (
        lambda s: _edit_toml(s, lambda d: d.update(study_id=5)),
        "study.toml is damaged", "study.toml study_id", "found: 5"),
    "study.toml objective no run has": (
        lambda s: _edit_toml(s, lambda d: d["objective"].update(metric="val_mea")),
        "the study's objective is not a column", "objective.metric", "did you mean 'val_mae'"),
    "torn configuration": (lambda s: (s / "configurations" / "0000.json").write_text("{"),
                           "a study's configuration record is damaged",
                           "configurations/0000.json", "not JSON"),
    "lost configuration": (lambda s: (s / "configurations" / "0000.json").unlink(),
                           "a study's configuration record is missing",
                           "configurations/0000.json", "no file for configuration 0"),
    "pair record with a value that is text": (
        lambda s: _edit_json(_pair(s), lambda d: d.update(value="x")),
        "a study's pair record is damaged", "c0000-r000.json", "value = 'x'"),
    "configuration record of another grid point": (
        lambda s: _edit_json(s / "configurations" / "0000.json",
                             lambda d: d.update(params={"model.width": 3})),
        "a study's configuration record does not fit its specification",
        "configurations/0000.json", "{'model.width': 3}"),
    "torn metrics.json of a run": (
        lambda s: (_run_dir(s) / "metrics.json").write_text("{"),
        "the run's metrics.json cannot be read", "metrics.json", "not JSON"),
    "a folder in place of results.json": (
        lambda s: ((s / "results.json").unlink(), (s / "results.json").mkdir()),
        "the study directory is damaged", "results.json", "found: a folder"),
    "a file in place of configurations/": (
        lambda s: (shutil.rmtree(s / "configurations"), (s / "configurations").write_text("")),
        "the study directory is damaged", "configurations", "found: a file"),
    "a folder in place of the lock": (
        lambda s: ((s / "lock").unlink(), (s / "lock").mkdir()),
        "the study directory is damaged", "lock", "expected: a file"),
}


def _run_dir(study: Path) -> Path:
    return study / "runs" / json.loads(_pair(study).read_text())["run_id"]


RESUME_ONLY = {
    "garbage journal": (lambda s: (s / "optuna.journal").write_text("garbage{{\n"),
                        "trials cannot be read", "optuna.journal", "found:"),
    "lost journal": (lambda s: (s / "optuna.journal").unlink(),
                     "the study's trial journal is missing", "optuna.journal", "no such file"),
    "study.toml naming a recipe that is gone": (
        lambda s: _edit_toml(s, lambda d: d.update(recipe="gone")),
        "unknown recipe 'gone'", "recipes.toml", "found:"),
    "study.toml with a base of the wrong type": (
        lambda s: _edit_toml(s, lambda d: d["base"]["train"].update(epochs="x")),
        "wrong type for config key 'train.epochs'", "study.toml [base]", "found:"),
}


def _damaged_copy(finished_study: Path, tmp_path: Path, damage) -> Path:
    study = tmp_path / "study"
    shutil.copytree(finished_study, study)
    damage(study)
    return study


def _verb(argv: list[str], capsys) -> tuple[int, str]:
    code = main([*argv, "--recipes", str(RECIPES)])
    return code, capsys.readouterr().err


def _files(study: Path) -> dict:
    return {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", [*DAMAGE, *RESUME_ONLY])
def test_a_damaged_study_is_refused_and_left_as_it_was(finished_study, tmp_path, capsys,
                                                       monkeypatch, case):
    """Damage to the records: `report` and `sweep --resume` refuse it. Damage only a run
    would meet (the journal, the recipe, the config): `sweep --resume` refuses it. Either
    way no run is rerun and no file is rewritten."""
    damage, what, where, found = DAMAGE.get(case) or RESUME_ONLY[case]
    study = _damaged_copy(finished_study, tmp_path, damage)
    monkeypatch.chdir(tmp_path)
    before = _files(study)
    verbs = [["sweep", "--resume", str(study)]] + ([["report", str(study)]] if case in DAMAGE
                                                   else [])
    for argv in verbs:
        code, err = _verb(argv, capsys)
        assert code == 2, (argv, err)
        assert what in err and where in err and found in err, err
        assert "Traceback" not in err
    assert _files(study) == before


def test_worker_refuses_a_study_without_its_journal(finished_study, tmp_path, capsys,
                                                    monkeypatch):
    study = _damaged_copy(finished_study, tmp_path, lambda s: (s / "optuna.journal").unlink())
    monkeypatch.chdir(tmp_path)
    code, err = _verb(["sweep", "--worker", str(study)], capsys)
    assert code == 2 and "optuna.journal" in err and "Traceback" not in err


def test_resume_names_the_config_key_that_differs(finished_study, tmp_path, capsys,
                                                  monkeypatch):
    """A resume's --set is compared key by key with the study's config: the same value is no
    change; another names its key, not a cut-off dump of the whole config."""
    study = _damaged_copy(finished_study, tmp_path, lambda s: None)
    monkeypatch.chdir(tmp_path)
    code, err = _verb(["sweep", "--resume", str(study), "--set", "train.epochs=1"], capsys)
    assert code == 0, err
    code, err = _verb(["sweep", "--resume", str(study), "--set", "train.epochs=5"], capsys)
    assert code == 2
    assert "another base (it differs at train.epochs)" in err
    assert "{'train.epochs': 1}" in err and "{'train.epochs': 5} from the flags" in err


def test_worker_takes_no_retry_failed(finished_study, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _verb(["sweep", "--worker", str(finished_study), "--retry-failed"], capsys)
    assert code == 2 and "also --retry-failed" in err


def test_a_sqlite_store_that_cannot_be_made_leaves_no_study(tmp_path, capsys, monkeypatch):
    """The store fails only once the study's folder is made (a file that is no database):
    exit 2 naming the URL, the half-made folder removed, the user's file left as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.db").write_bytes(b"not a database, a user's file" * 100)
    code, err = _verb(["sweep", "tiny", "--storage", f"sqlite:///{tmp_path}/x.db",
                       "--set", "train.epochs=1"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "the study's trial store cannot be made" in err and f"{tmp_path}/x.db" in err
    assert not any((tmp_path / "artifacts" / "studies" / "tiny").iterdir())
    assert (tmp_path / "x.db").read_bytes() == b"not a database, a user's file" * 100
