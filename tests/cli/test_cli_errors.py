"""What the command line does with errors: recipe code that raises (exit 1, status failed, the
traceback in train.log), user errors with and without --debug / ENGINE_DEBUG, ENGINE_RECIPES,
and a mid-epoch checkpoint resumed with another number of processes (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import resume_recipe as rr
import torch

from engine.cli import main


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGINE_DEBUG", raising=False)
    monkeypatch.delenv("ENGINE_RECIPES", raising=False)


@pytest.mark.slow
def test_recipe_code_raising_at_step_3_exits_1_with_the_traceback_in_train_log(tmp_path):
    """`python -m engine run` with forward_batch raising at step 3: exit 1, a message on
    stderr naming forward_batch, metrics.json `failed` with an error naming forward_batch at
    step 3, train.log holding the traceback, last.pt of an earlier step intact."""
    registry = rr.write_registry(tmp_path, train={"checkpoint_every_n_steps": 2},
                                 fault={"raise_at_step": 3})
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "tiny", "--recipes",
                           str(registry)], cwd=tmp_path, env=rr.subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "forward_batch" in proc.stderr and "fault injected at step 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    error = metrics["error"]
    assert error["step"] == 3 and error["epoch"] == 0
    assert "forward_batch" in error["message"] and "RuntimeError" in error["message"]
    log = (run / "train.log").read_text()
    assert "Traceback (most recent call last)" in log
    assert "in forward_batch" in log and "fault injected at step 3" in log
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["step"] == 2


def _user_error(tmp_path, capsys, *extra) -> tuple[int, str]:
    registry = rr.write_registry(tmp_path)
    code = main(["run", "tiny", "--recipes", str(registry), "--set", "train.epocs=3", *extra])
    return code, capsys.readouterr().err


def test_a_user_error_has_no_traceback_without_debug(tmp_path, capsys):
    code, err = _user_error(tmp_path, capsys)
    assert code == 2
    assert "error: unknown config key 'train.epocs'" in err and "did you mean 'epochs'" in err
    assert "Traceback" not in err


def test_debug_adds_the_traceback(tmp_path, capsys):
    code, err = _user_error(tmp_path, capsys, "--debug")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "error: unknown config key 'train.epocs'" in err


@pytest.mark.parametrize(("value", "traceback"), [("1", True), ("0", False), ("", False)])
def test_engine_debug_adds_the_traceback(tmp_path, capsys, monkeypatch, value, traceback):
    monkeypatch.setenv("ENGINE_DEBUG", value)
    code, err = _user_error(tmp_path, capsys)
    assert code == 2 and "error: unknown config key 'train.epocs'" in err
    assert ("Traceback (most recent call last)" in err) is traceback


def test_engine_recipes_names_the_registry(tmp_path, capsys, monkeypatch):
    """In a folder without recipes.toml (nor one above it), ENGINE_RECIPES is the registry
    `list` reads; without it, the same command finds none (exit 2)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    registry = rr.write_registry(elsewhere)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["list"]) == 2
    capsys.readouterr()
    monkeypatch.setenv("ENGINE_RECIPES", str(registry))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["tiny", "other"]


def test_a_mid_epoch_checkpoint_of_two_processes_resumed_in_one_exits_2(tmp_path, capsys):
    """`run --resume` of a run whose last.pt was written mid-epoch by 2 processes: exit 2 and
    one message naming the checkpoint and both numbers; nothing trained."""
    registry = rr.write_registry(tmp_path, train={"checkpoint_every_n_steps": 3,
                                                  "epochs": 1})
    assert main(["run", "tiny", "--recipes", str(registry)]) == 0
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    # the epoch-end last.pt, rewritten as the step-3 checkpoint of 2 processes would be
    last = run / "checkpoints" / "last.pt"
    data = torch.load(last, weights_only=True)
    data["loop"].update(batch=3, step=3, epoch=0)
    data["world_size"] = 2
    torch.save(data, last)
    capsys.readouterr()
    code = main(["run", "tiny", "--recipes", str(registry), "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "mid-epoch by another number of processes" in err
    assert str(last) in err and "2 processes" in err and "1 process" in err
    assert "Traceback" not in err
    assert torch.load(last, weights_only=True)["loop"]["step"] == 3


def test_sweep_resume_with_no_workers_is_refused(tmp_path, capsys):
    """`sweep --resume DIR --workers 0` ran with one worker (0 read as "not given"); a new
    sweep refuses it, and so does a resumed one, before the folder is even read."""
    code = main(["sweep", "--resume", str(tmp_path), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: --workers needs at least one worker" in err and "found: 0" in err
