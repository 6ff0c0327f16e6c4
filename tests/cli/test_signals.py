"""Stops from outside, through `python -m engine run` in a subprocess.

- SIGTERM or SIGINT at a known step: the stop lands within one step, mid-epoch; exit 130,
  status `interrupted`, a resumable last.pt; `--resume` finishes (exit 0).
- A second signal during the stop stops at once and still leaves valid files.
- SIGKILL at several moments (before the first checkpoint, during a step, during a checkpoint
  write), each followed by `--resume`: every file parses, and the final weights, optimizer
  state and history equal those of an uninterrupted run, to the bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import resume_recipe as rr
import torch

from engine.cli import main


def start(tmp: Path, registry: Path, *args: str, tag: str) -> subprocess.Popen:
    """`python -m engine run tiny ARGS` in `tmp`; stdout and stderr go to files named by tag."""
    out = open(tmp / f"{tag}.out", "w")   # noqa: SIM115 (closed by the child's exit)
    err = open(tmp / f"{tag}.err", "w")   # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "tiny", "--recipes",
                             str(registry), *args], cwd=tmp, env=rr.subprocess_env(tmp),
                            stdout=out, stderr=err)
    proc.files = (out, err)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    rc = proc.wait(timeout=timeout)
    for f in proc.files:
        f.close()
    return rc


def output(tmp: Path, tag: str) -> tuple[str, str]:
    return (tmp / f"{tag}.out").read_text(), (tmp / f"{tag}.err").read_text()


def wait_until(test, proc: subprocess.Popen, timeout: float = 90, poll: float = 0.001) -> bool:
    """Poll `test()` until it holds (True) or the process ends first (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if test():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError("timed out waiting for the run")


def started(tmp: Path, tag: str):
    return lambda: "run directory:" in (tmp / f"{tag}.out").read_text()


@pytest.fixture(autouse=True)
def _in_process(monkeypatch, tmp_path):
    """Resumes and the reference run go through `engine.cli.main` here (no interpreter start);
    with one thread, as the children have, so that results are comparable to the bit."""
    monkeypatch.setenv("ENGINE_PLOTS", "inline")   # drawn here, and so patched out:
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def resume_here(registry: Path, run: Path) -> int:
    return main(["run", "tiny", "--recipes", str(registry), "--resume", str(run)])


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_within_one_step_with_130_and_resume_finishes(tmp_path, name):
    """The run signals itself when step 7 ends (epoch 2 of 3, 5 steps an epoch): exit 130,
    status interrupted, and last.pt holds the state one step later at most, inside epoch 2
    (epoch 1, batch 2 or 3: not the epoch's end); --resume exits 0, completed, with the whole
    history, in the same run directory."""
    k = 7
    registry = rr.write_registry(tmp_path, "resume_recipe:signalling",
                                 fault={"signal_at_step": k, "signal": name})
    proc = start(tmp_path, registry, tag="first")
    assert finish(proc) == 130, output(tmp_path, "first")
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    assert "--resume" in output(tmp_path, "first")[1]
    assert metrics(run)["status"] == "interrupted"
    saved = load(run / "checkpoints" / "last.pt")["loop"]
    assert saved["step"] in (k, k + 1), saved
    assert saved["epoch"] == 1 and saved["batch"] == saved["step"] - 5, saved
    assert metrics(run)["history"]["epoch"] == [0]
    rr.check_files_parse(run)

    assert main(["run", "tiny", "--recipes", str(registry), "--resume", str(run),
                 "--set", "fault.signal_at_step=-1"]) == 0
    assert metrics(run)["status"] == "completed"
    assert metrics(run)["history"]["epoch"] == [0, 1, 2]
    assert load(run / "checkpoints" / "last.pt")["loop"]["epoch"] == 3
    assert rr.run_dirs(tmp_path / "artifacts") == [run]


@pytest.mark.slow
def test_a_second_signal_during_the_stop_still_leaves_valid_files(tmp_path):
    """SIGTERM, then another as soon as the stop starts writing last.pt: the run stops at once
    (exit 130), every file parses, and --resume finishes the run."""
    registry = rr.write_registry(tmp_path, train={"checkpoint_every_n_steps": 2},
                                 model={"width": 256, "depth": 4}, fault={"sleep_ms": 20})
    proc = start(tmp_path, registry, tag="first")
    assert wait_until(started(tmp_path, "first"), proc)
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    last = run / "checkpoints" / "last.pt"
    assert wait_until(last.exists, proc)
    before = last.stat().st_mtime_ns
    proc.send_signal(signal.SIGTERM)
    # the stop writes last.pt: send the second signal while it does, or as soon as it is done
    # (the run is then still ending: metrics.json, the log, the plot)
    assert wait_until(lambda: any(last.parent.glob("last.pt.*.tmp"))
                      or last.stat().st_mtime_ns != before, proc, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 130, output(tmp_path, "first")
    assert "second signal" in output(tmp_path, "first")[1]
    read = rr.check_files_parse(run)
    assert "checkpoints/last.pt" in read and "metrics.json" in read and "config.toml" in read
    assert metrics(run)["status"] == "interrupted"

    assert resume_here(registry, run) == 0
    assert metrics(run)["status"] == "completed"
    assert metrics(run)["history"]["epoch"] == [0, 1, 2]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL before the first checkpoint, during checkpoint writes and at random moments;
    after each kill every file parses; resuming the chain to the end gives the weights,
    optimizer state and history of an uninterrupted run (torch.equal)."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    note = f"(random seed {seed})"
    # a checkpoint every step, big enough that a save takes a few milliseconds to write
    registry = rr.write_registry(tmp_path, train={"epochs": 6, "checkpoint_every_n_steps": 1},
                                 model={"width": 256, "depth": 4}, fault={"sleep_ms": 15})

    kills = []   # (kind, a write cut (last.pt.tmp left behind), the step last.pt holds)

    def kill(proc, kind, run_dir):
        proc.send_signal(signal.SIGKILL)
        assert finish(proc) == -signal.SIGKILL, note
        last = run_dir / "checkpoints" / "last.pt"
        tmp_left = any(last.parent.glob("last.pt.*.tmp"))
        kills.append((kind, tmp_left, load(last)["loop"]["step"] if last.exists() else None))
        rr.check_files_parse(run_dir)

    # 1. before the first checkpoint: nothing to resume, so the run must start over
    proc = start(tmp_path, registry, tag="p0")
    assert wait_until(started(tmp_path, "p0"), proc), note
    (run0,) = rr.run_dirs(tmp_path / "artifacts")
    kill(proc, "before the first checkpoint", run0)
    if (run0 / "checkpoints" / "last.pt").exists():
        run, args = run0, ("--resume", str(run0))   # the first step was faster than the kill
    else:
        assert main(["run", "tiny", "--recipes", str(registry), "--resume", str(run0)]) == 2
        run, args = None, ()

    # 2.-3. during a checkpoint write, then at a random moment (in a step or a write)
    for i, kind in enumerate(("during a checkpoint write", "at a random moment")):
        tag = f"p{i + 1}"
        proc = start(tmp_path, registry, *args, tag=tag)
        assert wait_until(started(tmp_path, tag), proc), (output(tmp_path, tag), note)
        if run is None:
            run = next(d for d in rr.run_dirs(tmp_path / "artifacts") if d != run0)
            args = ("--resume", str(run))
        last = run / "checkpoints" / "last.pt"
        if kind == "at a random moment":
            time.sleep(rng.uniform(0.02, 0.25))
            landed = proc.poll() is None
        else:
            # skip a random number of saves first, then kill while the next one is written
            mtime = last.stat().st_mtime_ns if last.exists() else 0
            for _ in range(rng.randint(1, 4)):
                wait_until(lambda m=mtime, f=last: f.exists() and f.stat().st_mtime_ns != m,
                           proc)
                mtime = last.stat().st_mtime_ns
            landed = wait_until(lambda last=last: any(last.parent.glob("last.pt.*.tmp")), proc)
        assert landed, f"the run ended before kill {i + 1}; make it longer {note}"
        kill(proc, kind, run)
        assert last.exists(), note

    # 4. resume to the end; the uninterrupted run to compare with
    assert resume_here(registry, run) == 0, note
    assert main(["run", "tiny", "--recipes", str(registry), "--output-dir",
                 str(tmp_path / "ref")]) == 0
    (ref,) = rr.run_dirs(tmp_path / "ref")

    assert any(cut for _, cut, _ in kills), f"no kill cut a write: {kills} {note}"
    assert all(step is None or step < 30 for *_, step in kills), kills   # all before the end
    assert [p.name for p in run.rglob("*.tmp")] == [], note
    rr.check_files_parse(run)
    final, expected = load(run / "checkpoints" / "last.pt"), load(ref / "checkpoints" / "last.pt")
    for key in expected["model"]:
        assert torch.equal(final["model"][key], expected["model"][key]), (key, kills, note)
    for pid, state in expected["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(final["optimizer"]["state"][pid][name], tensor), (pid, name)
    assert final["loop"] == expected["loop"]
    assert metrics(run)["history"] == metrics(ref)["history"]
    assert metrics(run)["status"] == "completed"
    print(f"kills: {kills} {note}")
