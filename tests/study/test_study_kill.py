"""Exactly once: a worker killed with SIGKILL mid-run loses nothing. Its run continues from
its last.pt in its own run directory (taken over by the other worker, or on --resume), no
pair runs twice or goes missing, and the continued run matches a run left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, engine

RECIPES = Path(__file__).with_name("recipes.toml")
pytestmark = pytest.mark.slow
EPOCHS = 6


def _victim(folder: Path, deadline: float, chosen) -> dict:
    """A claimed pair whose run has written a checkpoint after its first epoch, in a worker
    whose pid is `chosen` (the sweep is itself one of the workers)."""
    while time.time() < deadline:
        for path in sorted((folder / "pairs").glob("*.json")) if (folder / "pairs").is_dir() \
                else ():
            try:
                record = json.loads(path.read_text())
                run = folder / "runs" / record["run_id"]
                history = json.loads((run / "metrics.json").read_text())["history"]
            except (OSError, ValueError, KeyError):
                continue
            if (record["state"] == "claimed" and chosen(record["worker"]["pid"])
                    and 1 <= len(history["epoch"]) < EPOCHS - 1):
                return record
        time.sleep(0.05)
    raise AssertionError("no run reached its first checkpoint in time")


def test_kill_9_of_a_worker_then_resume(tmp_path):
    """SIGKILL one of two workers mid-run; after the sweep and a --resume, every pair has
    exactly one run, complete, and the killed one equals a run left alone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "engine", "sweep", "tiny", "--recipes", str(RECIPES),
           "--grid", "model.width=2,4", "--seeds", "2", "--workers", "2",
           "--set", f"train.epochs={EPOCHS}", "--set", "model.step_sleep=0.05"]
    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "artifacts" / "studies" / "tiny").is_dir():
            assert time.time() < deadline and sweep.poll() is None, sweep.communicate()
            time.sleep(0.1)
        (folder,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
        victim = _victim(folder, deadline, lambda pid: pid != sweep.pid)
        os.kill(victim["worker"]["pid"], signal.SIGKILL)
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode in (0, 1), err   # 1: the killed worker's run was left to resume
    resumed = engine("sweep", "--resume", str(folder), cwd=tmp_path, recipes=RECIPES)
    assert resumed.returncode == 0, resumed.stderr

    runs = sorted(p for p in (folder / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4   # one run per (configuration, replicate), none repeated
    records = [json.loads(p.read_text()) for p in sorted((folder / "pairs").glob("*.json"))]
    assert sorted((r["configuration"], r["replicate"]) for r in records) == [
        (0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r["run_id"] for r in records} == {p.name for p in runs}
    assert all(r["state"] == "done" and r["status"] == "completed" for r in records)
    for run in runs:
        history = json.loads((run / "metrics.json").read_text())["history"]
        assert history["epoch"] == list(range(EPOCHS))
    killed = folder / "runs" / victim["run_id"]
    assert "resum" in (killed / "train.log").read_text().lower()

    # the continued run equals the same config run without interruption
    alone = engine("run", "tiny", "--config", str(killed / "config.toml"), "--output-dir",
                   str(tmp_path / "alone"), cwd=tmp_path, recipes=RECIPES)
    assert alone.returncode == 0, alone.stderr
    (other,) = (tmp_path / "alone" / "models" / "tiny" / "runs").iterdir()
    left_alone = json.loads((other / "metrics.json").read_text())["history"]
    continued = json.loads((killed / "metrics.json").read_text())["history"]
    assert continued["val_loss"] == left_alone["val_loss"]
    assert continued["train_loss"] == left_alone["train_loss"]


def test_kill_9_of_the_sweep_then_resume(tmp_path):
    """SIGKILL the sweep itself (one of the two workers) mid-run: the other worker stops
    resumably (SIGTERM from the kernel); a --resume ends the study with one complete run per
    pair, the killed one continued from its last.pt."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "engine", "sweep", "tiny", "--recipes", str(RECIPES),
           "--grid", "model.width=2,4", "--seeds", "2", "--workers", "2",
           "--set", f"train.epochs={EPOCHS}", "--set", "model.step_sleep=0.05"]
    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "artifacts" / "studies" / "tiny").is_dir():
            assert time.time() < deadline and sweep.poll() is None
            time.sleep(0.1)
        (folder,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
        victim = _victim(folder, deadline, lambda pid: pid == sweep.pid)
        sweep.kill()
        sweep.wait(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    # the other worker hears of it (PR_SET_PDEATHSIG) and ends; wait for its pairs to settle
    deadline = time.time() + 120
    while any(json.loads(p.read_text())["state"] == "claimed" and json.loads(p.read_text())[
            "worker"]["pid"] != sweep.pid for p in (folder / "pairs").glob("*.json")):
        assert time.time() < deadline, "the other worker did not stop"
        time.sleep(0.2)
    resumed = engine("sweep", "--resume", str(folder), cwd=tmp_path, recipes=RECIPES)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(p.read_text()) for p in sorted((folder / "pairs").glob("*.json"))]
    assert sorted((r["configuration"], r["replicate"]) for r in records) == [
        (0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["state"] == "done" and r["status"] == "completed" for r in records)
    runs = sorted(p for p in (folder / "runs").iterdir() if p.is_dir())
    assert {r["run_id"] for r in records} == {p.name for p in runs} and len(runs) == 4
    killed = folder / "runs" / victim["run_id"]
    assert "resum" in (killed / "train.log").read_text().lower()
    assert json.loads((killed / "metrics.json").read_text())["history"]["epoch"] == list(
        range(EPOCHS))
