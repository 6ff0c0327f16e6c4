"""`run --resume`: a checkpoint that is unsafe, junk, torn, of another recipe or of another model
shape is refused with exit code 2 naming the file and the difference; a finished run says so.

These go through `engine.cli.main` in this process (the exit code and stderr are the CLI's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import resume_recipe as rr
import torch

from engine.cli import main
from engine.core.errors import UserError
from engine.io import checkpoint as ckpt


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_PLOTS", "inline")   # drawn here, and so patched out:
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)   # a stray new run would land in ./artifacts: keep it here


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(recipes.toml, run directory) of a completed 2-epoch run of `tiny`."""
    folder = tmp_path_factory.mktemp("safety")
    registry = rr.write_registry(folder, train={"epochs": 2})
    assert main(["run", "tiny", "--recipes", str(registry), "--output-dir",
                 str(folder / "out")]) == 0
    (run_dir,) = rr.run_dirs(folder / "out")
    return registry, run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(run_dir, dest)
    return dest


def resume(registry: Path, path: Path, *sets: str) -> int:
    argv = ["run", "tiny", "--recipes", str(registry), "--resume", str(path)]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


class Payload:
    """Runs code when unpickled: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(finished, tmp_path,
                                                                          capsys):
    """A __reduce__ payload in last.pt: exit 2 naming the file; the marker file is not made."""
    registry, run_dir = finished
    run = copy_run(run_dir, tmp_path / "run")
    marker = tmp_path / "pwned"
    good = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**good, "model": Payload(marker)}, run / "checkpoints" / "last.pt")
    # the payload is real: an unsafe load would run it
    torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    for path in (run, run / "checkpoints" / "last.pt"):
        capsys.readouterr()
        assert resume(registry, path, "train.epochs=3") == 2
        err = capsys.readouterr().err
        assert "checkpoint refused" in err and "last.pt" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 6
        assert not marker.exists()
    with pytest.raises(UserError):
        ckpt.load(run / "checkpoints" / "last.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["junk", "torn", "empty", "not a checkpoint"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(finished, tmp_path, capsys, damage):
    """Junk bytes, a truncated (torn) file, an empty file or a plain state_dict: exit 2, one
    message naming the file, no traceback."""
    registry, run_dir = finished
    run = copy_run(run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "junk":
        last.write_bytes(os.urandom(4096))
    elif damage == "torn":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        torch.save(torch.load(last, weights_only=True)["model"], last)
    before = (run / "metrics.json").read_bytes()
    assert resume(registry, run, "train.epochs=3") == 2
    err = capsys.readouterr().err
    assert str(last) in err and "Traceback" not in err
    assert err.startswith("error: ")
    # a refused resume writes nothing
    assert (run / "metrics.json").read_bytes() == before


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path, capsys):
    """A run of `other` resumed as `tiny`: exit 2 naming both recipes."""
    registry = rr.write_registry(tmp_path)
    assert main(["run", "other", "--recipes", str(registry), "--output-dir",
                 str(tmp_path / "out"), "--set", "train.epochs=1"]) == 0
    (run,) = rr.run_dirs(tmp_path / "out", "other")
    capsys.readouterr()
    assert resume(registry, run / "checkpoints" / "last.pt", "train.epochs=2") == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "'other'" in err and "'tiny'" in err
    assert "last.pt" in err


def test_a_checkpoint_whose_shapes_differ_from_the_config_names_the_parameter(finished,
                                                                              tmp_path, capsys):
    """--set model.width=32 on a width-16 run: exit 2 with the first mismatched parameter and
    both shapes."""
    registry, run_dir = finished
    run = copy_run(run_dir, tmp_path / "run")
    capsys.readouterr()
    assert resume(registry, run, "train.epochs=3", "model.width=32") == 2
    err = capsys.readouterr().err
    assert "body.0.weight" in err and "(32, 6)" in err and "(16, 6)" in err
    assert "last.pt" in err and "Traceback" not in err


def test_resuming_a_finished_run_says_so_and_more_epochs_extend_it(finished, tmp_path, capsys):
    """Same epoch count: exit 0, nothing written. train.epochs=4: continues in the same folder
    and appends two rows to the history."""
    registry, run_dir = finished
    run = copy_run(run_dir, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert resume(registry, run) == 0
    out = capsys.readouterr().out
    assert "already completed 2 of 2 epochs" in out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    assert resume(registry, run, "train.epochs=4") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    old = json.loads(before[run / "metrics.json"])
    assert metrics["status"] == "completed"
    assert metrics["history"]["epoch"] == [0, 1, 2, 3]
    for key, values in old["history"].items():
        assert metrics["history"][key][:2] == values
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loop"]["epoch"] == 4
    assert not (tmp_path / "artifacts").exists()   # no new run directory anywhere


def test_a_resume_path_that_holds_no_checkpoint_is_a_user_error(tmp_path, capsys):
    """A folder without checkpoints/last.pt and a missing path: exit 2, no traceback."""
    registry = rr.write_registry(tmp_path)
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nowhere"):
        capsys.readouterr()
        assert resume(registry, path) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err


def test_an_early_stopped_run_is_finished_unless_patience_is_raised(tmp_path, capsys):
    """Early stopping ended the run: --resume changes nothing (exit 0); with more patience it
    goes on from where it stopped."""
    registry = rr.write_registry(tmp_path, train={"epochs": 6, "learning_rate": 0.3,
                                                  "early_stopping_patience": 1})
    assert main(["run", "tiny", "--recipes", str(registry)]) == 0
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    stopped = json.loads((run / "metrics.json").read_text())
    assert stopped["status"] == "early_stopped" and len(stopped["history"]["epoch"]) < 6
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert resume(registry, run) == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    assert resume(registry, run, "train.early_stopping_patience=10") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["history"]["epoch"] == list(range(6))
