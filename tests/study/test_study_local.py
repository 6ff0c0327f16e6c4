"""The sweep's other workers on this machine are forks of it, taken before the checks: they
take pairs at once when the study starts, vanish when a check fails, and get their share of
the cores as torch threads."""

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

from engine.study import local

RECIPES = Path(__file__).with_name("recipes.toml")


def _sweeps_in(folder: Path) -> list[int]:
    """`engine sweep` processes whose working directory is `folder` (a fork keeps the
    sweep's command line and folder; the plot helper, which ends on its own, is not one)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (Path(os.readlink(f"/proc/{pid}/cwd")) == folder
                    and b"sweep" in Path(f"/proc/{pid}/cmdline").read_bytes()):
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize(("env", "cores", "workers", "expected"), [
    ({}, 16, 4, 4), ({}, 2, 2, 1), ({}, 2, 3, 1), ({}, 8, 1, None),
    ({"OMP_NUM_THREADS": "3"}, 16, 4, None)])
def test_threads_per_worker(monkeypatch, env, cores, workers, expected):
    """cores // workers, at least 1; none set with one worker or a user's OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cores)))
    assert local.threads_per_worker(workers) == expected


def test_a_cancelled_standby_ends_without_a_trace(tmp_path, monkeypatch):
    """Forks told there is no study exit 0, write nothing, and are reaped."""
    monkeypatch.chdir(tmp_path)
    standby = local.fork_standby(2, None)
    pids = [pid for pid, _ in standby._children]
    assert len(pids) == 2
    standby.cancel()
    for pid in pids:
        with pytest.raises(ChildProcessError):   # reaped: no zombie left
            os.waitpid(pid, os.WNOHANG)
    assert list(tmp_path.iterdir()) == []
    standby.cancel()   # twice: a no-op


def test_a_fork_that_died_while_waiting_is_reported_not_raised(tmp_path, monkeypatch):
    """start() on a study after a waiting fork was killed: no BrokenPipeError, and its
    handle says how it ended (the sweep then reports the study unfinished)."""
    monkeypatch.chdir(tmp_path)
    standby = local.fork_standby(1, None)
    ((pid, _),) = standby._children
    os.kill(pid, signal.SIGKILL)
    (proc,) = standby.start(tmp_path)
    deadline = time.time() + 30
    while proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_failed_check_with_workers_leaves_no_process_and_no_study(tmp_path):
    """exit 2 for a bad objective with --workers 3: no study directory, no fork left."""
    done = engine("sweep", "tiny", "--grid", "model.width=2,4", "--workers", "3",
                  "--objective", "val_nope", cwd=tmp_path, recipes=RECIPES)
    assert done.returncode == 2, done.stderr
    assert "val_nope" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()
    assert _sweeps_in(tmp_path) == []


@pytest.mark.slow
def test_forked_workers_share_the_study(tmp_path):
    """--workers 2 without OMP_NUM_THREADS: the fork logs that it is one, with cores // 2
    torch threads, and both processes run pairs; each pair once."""
    done = engine("sweep", "tiny", "--grid", "model.width=2,4,6", "--seeds", "2",
                  "--workers", "2", "--set", "model.step_sleep=0.05", cwd=tmp_path,
                  recipes=RECIPES, env={"OMP_NUM_THREADS": ""})
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
    (log,) = (folder / "workers").iterdir()
    text = log.read_text()
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert "forked from the sweep, pid " in text and f"{threads} torch thread(s)" in text
    records = [json.loads(p.read_text()) for p in sorted((folder / "pairs").glob("*.json"))]
    assert len(records) == 6 and len({r["run_id"] for r in records}) == 6
    assert len({r["worker"]["pid"] for r in records}) == 2
    assert all(r["status"] == "completed" for r in records)


def test_workers_are_forks_only_where_that_is_safe(monkeypatch):
    """Linux before CUDA is initialised: forks; macOS, Windows, or CUDA in use: processes."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for platform, expected in (("linux", True), ("darwin", False), ("win32", False)):
        monkeypatch.setattr(local.sys, "platform", platform)
        assert local.can_fork() is expected, platform
    monkeypatch.setattr(local.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert local.can_fork() is False


@pytest.mark.slow
def test_without_fork_the_workers_are_sweep_worker_processes(tmp_path):
    """can_fork() False (macOS, Windows, CUDA in use): the other worker is a fresh `sweep
    --worker` process; the pairs are shared and each runs once, as with forks."""
    code = ("import sys; import engine.study.local as local; local.can_fork = lambda: False; "
            "from engine.cli import main; raise SystemExit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, "sweep", "tiny", "--recipes",
                           str(RECIPES), "--grid", "model.width=2,4", "--seeds", "2",
                           "--workers", "2", "--set", "model.step_sleep=0.1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
    (log,) = (folder / "workers").iterdir()
    assert "worker joins study" in log.read_text() and "forked" not in log.read_text()
    records = [json.loads(p.read_text()) for p in sorted((folder / "pairs").glob("*.json"))]
    assert len(records) == 4 and len({r["run_id"] for r in records}) == 4
    assert all(r["status"] == "completed" for r in records)
