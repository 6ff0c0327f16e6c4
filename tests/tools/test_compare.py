"""`engine compare`: the config keys that differ, the best figures side by side, and a picture
of the validation curves, never written over an existing file."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import engine, run_dirs

from engine.tools.compare import MISSING, differences

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("compare")
    for lr in ("1e-3", "3e-3"):
        done = engine("run", "autoencoder", "--set", "train.epochs=2", "--set",
                      f"train.learning_rate={lr}", cwd=cwd)
        assert done.returncode == 0, done.stderr
    return cwd, run_dirs(cwd, "autoencoder")


def test_differences_names_only_the_keys_that_differ():
    a = {"train": {"epochs": 2, "learning_rate": 1e-3}, "model": {"hidden": 8}}
    b = {"train": {"epochs": 2, "learning_rate": 3e-3}}
    assert differences([a, b]) == {"model.hidden": [8, MISSING],
                                   "train.learning_rate": [1e-3, 3e-3]}
    assert differences([a, a]) == {}


def test_compare_names_the_learning_rate_and_draws_the_curves(two_runs):
    cwd, (first, second) = two_runs
    done = engine("compare", str(first), str(second), cwd=cwd)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    start = out.index(next(line for line in out if line.startswith("config keys that differ")))
    end = out.index("", start)
    assert [line.split() for line in out[start + 1:end]] == [
        ["train.learning_rate", "0.001", "0.003"]]
    assert any(line.split()[:1] == ["val_loss"] and len(line.split()) == 3 for line in out)
    (picture,) = (cwd / "artifacts" / "compare").glob("*.png")
    assert picture.read_bytes().startswith(PNG)
    assert out[-1] == f"picture: {picture.relative_to(cwd)}"


def test_an_existing_output_file_is_never_overwritten(two_runs, tmp_path):
    cwd, (first, second) = two_runs
    target = tmp_path / "mine.png"
    target.write_bytes(b"keep me")
    done = engine("compare", str(first), str(second), "--output", str(target), cwd=cwd)
    assert done.returncode == 2 and "the output file exists" in done.stderr
    assert target.read_bytes() == b"keep me"
    done = engine("compare", str(first), str(second), "--output", str(tmp_path / "new.png"),
                  cwd=cwd)
    assert done.returncode == 0 and (tmp_path / "new.png").read_bytes().startswith(PNG)


def test_bad_run_dirs_are_exit_2_with_one_message_each(two_runs, tmp_path):
    cwd, (first, _) = two_runs
    (tmp_path / "empty").mkdir()
    done = engine("compare", str(first), str(tmp_path / "empty"), str(tmp_path / "nope"),
                  cwd=cwd)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("error: not a run directory") == 2
    done = engine("compare", str(first), cwd=cwd)
    assert done.returncode == 2 and "compare needs two runs or more" in done.stderr


def test_the_same_run_twice_is_exit_2(two_runs):
    """However spelt (a trailing slash, a `..` detour), one run twice is refused, no picture."""
    cwd, (first, _) = two_runs
    before = sorted((cwd / "artifacts" / "compare").glob("*"))
    detour = first / ".." / first.name
    done = engine("compare", str(first), f"{first}/", cwd=cwd)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1 and "where: RUN_DIR arguments" in done.stderr
    assert f"found: the same run directory twice: {first} and {first}/" in done.stderr
    done = engine("compare", str(first), str(detour), cwd=cwd)
    assert done.returncode == 2 and "the same run directory twice" in done.stderr
    assert sorted((cwd / "artifacts" / "compare").glob("*")) == before


def test_an_output_that_is_a_folder_or_under_a_file_is_exit_2(two_runs, tmp_path):
    cwd, (first, second) = two_runs
    (tmp_path / "pictures").mkdir()
    done = engine("compare", str(first), str(second), "--output", str(tmp_path / "pictures"),
                  cwd=cwd)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: the output is a folder" in done.stderr
    assert "found: an existing folder" in done.stderr and "existing file" not in done.stderr
    assert list((tmp_path / "pictures").iterdir()) == []
    (tmp_path / "notes.txt").write_text("keep me")
    done = engine("compare", str(first), str(second), "--output",
                  str(tmp_path / "notes.txt" / "c.png"), cwd=cwd)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"found: {tmp_path / 'notes.txt'} is a file, not a folder" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_damaged_metrics_json_is_exit_2_naming_the_field(two_runs, tmp_path):
    cwd, (first, second) = two_runs
    broken = tmp_path / second.name
    shutil.copytree(second, broken)
    metrics = json.loads((broken / "metrics.json").read_text())
    (broken / "metrics.json").write_text(json.dumps({**metrics, "best": "x"}))
    done = engine("compare", str(first), str(broken), "--output", str(tmp_path / "c.png"),
                  cwd=cwd)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1 and f"where: {broken}" in done.stderr
    assert 'metrics.json is damaged ("best" is "x", not an object)' in done.stderr
    assert not (tmp_path / "c.png").exists()
