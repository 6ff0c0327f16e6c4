"""Invariant 8 (DESIGN.md 5): a run stopped at step k and resumed equals the run left alone.

In-process: `fit` with a run directory, stopped at step k by a SIGINT sent from a callback (the
loop stops at the next step boundary and writes last.pt), or a copy of the mid-epoch last.pt
that `checkpoint_every_n_steps` writes at step k, or a completed run to k epochs extended to n.
Weights, optimizer, scheduler and RNG states are compared with torch.equal, the history exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import attrs
import pytest
import resume_recipe as rr
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine import Event, fit
from engine.core.events import listens_to

N_SAMPLES = 40   # resume_recipe's default training set


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    # metrics.png costs ~0.7 s a run and is not what these tests are about
    monkeypatch.setenv("ENGINE_PLOTS", "inline")   # drawn here, and so patched out:
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where: str = "") -> None:
    """Equal to the bit: tensors with torch.equal, floats exactly (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {where}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


def assert_runs_equal(resumed: Path, reference: Path) -> None:
    """The final checkpoints (all but the config, which may differ in epochs or checkpoint
    frequency), model.pt, best.pt and metrics.json's history and best are identical."""
    last, ref = load(resumed / "checkpoints" / "last.pt"), load(reference / "checkpoints"
                                                                / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "loop", "rng", "epoch_rng"):
        assert_same(last[key], ref[key], key)
    assert_same(load(resumed / "model.pt"), load(reference / "model.pt"), "model.pt")
    assert_same(load(resumed / "checkpoints" / "best.pt")["model"],
                load(reference / "checkpoints" / "best.pt")["model"], "best.pt")
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (resumed, reference))
    assert m["history"] == r["history"]
    assert m["best"] == r["best"]
    assert m["status"] == r["status"] == "completed"


def stop_at(k: int):
    """A callback that sends SIGINT once the run has taken k - 1 optimizer steps, so the loop
    stops after step k (or at the end of the epoch if step k - 1 ends one)."""
    sent = []

    @listens_to(Event.EPOCH_START, Event.STEP_END)
    def send(event, state):
        if not sent and state.step == k - 1:
            sent.append(state.step)
            os.kill(os.getpid(), signal.SIGINT)

    return send


def copy_at(k: int, dest: Path):
    """A callback that copies the run directory when the first last.pt of step k is written
    (what a preempted machine's disk holds at that moment)."""

    @listens_to(Event.CHECKPOINT_WRITTEN)
    def copy(event, state):
        path = Path(state.checkpoint_path)
        if state.step == k and path.name == "last.pt" and not dest.exists():
            shutil.copytree(state.run.run_dir, dest)

    return copy


_references: dict[tuple, Path] = {}


def reference(workdir: Path, sets: tuple[str, ...]) -> Path:
    """The uninterrupted run for these settings (cached across examples)."""
    if sets not in _references:
        run_dir = workdir / f"ref-{len(_references)}"
        result = fit(rr.recipe, rr.make_cfg(*sets), run_dir=run_dir)
        assert result.status == "completed"
        _references[sets] = run_dir
    return _references[sets]


settings_ = st.fixed_dictionaries({
    "epochs": st.integers(1, 4),
    "learning_rate": st.sampled_from([0.01, 0.1, 0.3]),   # 0.1, 0.3: some validations worsen
    "batch_size": st.sampled_from([8, 16]),
    "accum": st.sampled_from([1, 2]),
    "log_every": st.sampled_from([1, 3, 50]),
    "lr_patience": st.sampled_from([0, 2]),     # 0: the plateau scheduler cuts the rate often
})


@settings(max_examples=14, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=settings_, data=st.data(), how=st.sampled_from(["signal", "every", "extend"]))
def test_stop_at_step_k_and_resume_equals_the_run_left_alone(workdir, s, data, how):
    """Invariant 8: run to k (signal, mid-epoch checkpoint or completed shorter run), resume to
    n: weights, optimizer, scheduler, RNG, history and best equal the run to n, to the bit."""
    batches = math.ceil(N_SAMPLES / s["batch_size"])
    per_epoch = math.ceil(batches / s["accum"])
    if how == "extend":
        s["epochs"] = max(s["epochs"], 2)
    n = s["epochs"] * per_epoch
    sets = (f"train.epochs={s['epochs']}", f"train.batch_size={s['batch_size']}",
            f"train.grad_accum_steps={s['accum']}", f"train.log_every_n_steps={s['log_every']}",
            f"train.lr_patience={s['lr_patience']}", f"train.learning_rate={s['learning_rate']}")
    ref = reference(workdir, sets)
    event(f"resume by {how}")
    run_dir = workdir / f"run-{len(list(workdir.iterdir()))}"

    if how == "signal":
        k = data.draw(st.integers(1, n - 1), label="k")
        first = fit(rr.recipe, rr.make_cfg(*sets), run_dir=run_dir, callbacks=(stop_at(k),))
        assert first.status == "interrupted"
        saved = load(run_dir / "checkpoints" / "last.pt")["loop"]
        ends_epoch = k - 1 > 0 and (k - 1) % per_epoch == 0
        assert saved["step"] == (k - 1 if ends_epoch else k)
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
        resume = run_dir / "checkpoints" / "last.pt"
    elif how == "every":
        k = data.draw(st.integers(1, n - 1), label="k")
        sets_k = (*sets, f"train.checkpoint_every_n_steps={k}")
        copied = run_dir.with_name(run_dir.name + "-at-k")
        full = fit(rr.recipe, rr.make_cfg(*sets_k), run_dir=run_dir,
                   callbacks=(copy_at(k, copied),))
        assert full.status == "completed" and copied.exists()
        # checkpointing itself does not change the run
        assert_runs_equal(run_dir, ref)
        run_dir = copied
        resume = run_dir / "checkpoints" / "last.pt"
        assert load(resume)["loop"]["step"] == k
    else:
        k = data.draw(st.integers(1, s["epochs"] - 1), label="k epochs")
        first = fit(rr.recipe, rr.make_cfg(*sets, f"train.epochs={k}"), run_dir=run_dir)
        assert first.status == "completed" and len(first.history["epoch"]) == k
        resume = run_dir / "checkpoints" / "last.pt"

    result = fit(rr.recipe, rr.make_cfg(*sets), run_dir=run_dir, resume=resume)
    assert result.status == "completed"
    assert result.history["epoch"] == list(range(s["epochs"]))
    assert_runs_equal(run_dir, ref)
    # the returned model holds the best weights, also when the best came before the resume
    assert_same(result.model.state_dict(), load(ref / "model.pt"), "result.model")


def test_a_stop_inside_an_epoch_writes_a_mid_epoch_checkpoint(tmp_path):
    """The SIGINT stop lands inside an epoch: last.pt records the batches consumed, the epoch's
    starting RNG and the partial sums, and the resume completes the history."""
    cfg = rr.make_cfg("train.epochs=2")   # 5 batches an epoch
    first = fit(rr.recipe, cfg, run_dir=tmp_path / "run", callbacks=(stop_at(3),))
    assert first.status == "interrupted"
    saved = load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["loop"]["epoch"] == 0 and saved["loop"]["step"] == 3
    assert saved["loop"]["batch"] == 3 and saved["loop"]["totals"]["losses"] == 3
    assert saved["epoch_rng"] is not None
    assert first.history == {} or first.history.get("epoch") == []
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run",
                 resume=tmp_path / "run" / "checkpoints" / "last.pt")
    assert result.status == "completed" and result.history["epoch"] == [0, 1]


def test_a_stop_during_the_last_epoch_end_completes_the_run(tmp_path):
    """A SIGINT during the last step: the loop finishes that epoch (validation, checkpoint) and,
    with nothing left to run, ends `completed`, not `interrupted`."""
    cfg = rr.make_cfg("train.epochs=2")   # 5 steps an epoch
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run", callbacks=(stop_at(11),))
    assert result.status == "completed" and result.history["epoch"] == [0, 1]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_keep_last_keeps_the_last_k_epoch_checkpoints(tmp_path):
    """keep_last = 2: epoch checkpoints of the last two epochs remain, plus last.pt and best.pt;
    each holds the state at the end of its epoch."""
    fit(rr.recipe, rr.make_cfg("train.epochs=4", "train.keep_last=2"), run_dir=tmp_path / "r")
    folder = tmp_path / "r" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    epoch_files = [n for n in names if n not in ("last.pt", "best.pt")]
    assert len(epoch_files) == 2 and "last.pt" in names and "best.pt" in names
    epochs = sorted(load(folder / n)["loop"]["epoch"] for n in epoch_files)
    assert epochs == [3, 4]   # `epoch` in a checkpoint is the number of epochs done
    assert_same(load(folder / epoch_files[-1])["model"], load(folder / "last.pt")["model"])
    # a resumed run counts the epoch checkpoints written before the resume
    fit(rr.recipe, rr.make_cfg("train.epochs=6", "train.keep_last=2"), run_dir=tmp_path / "r",
        resume=folder / "last.pt")
    epoch_files = sorted(p.name for p in folder.iterdir() if p.name.startswith("epoch-"))
    assert [load(folder / n)["loop"]["epoch"] for n in epoch_files] == [5, 6]
    # keep_last = 0 (the default) keeps none
    fit(rr.recipe, rr.make_cfg("train.epochs=2"), run_dir=tmp_path / "r0")
    assert sorted(p.name for p in (tmp_path / "r0" / "checkpoints").iterdir()) == [
        "best.pt", "last.pt"]


def test_no_temporary_file_remains_after_a_run(tmp_path):
    """Every write goes through NAME.tmp and a rename: none is left behind."""
    fit(rr.recipe, rr.make_cfg("train.epochs=2", "train.checkpoint_every_n_steps=2",
                               "train.keep_last=1"), run_dir=tmp_path / "r")
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()


def test_a_resume_removes_what_a_killed_write_left_behind(tmp_path):
    """Half-written NAME.tmp files (a SIGKILL during a write) are deleted when the run resumes,
    even those of files the resume never rewrites."""
    fit(rr.recipe, rr.make_cfg("train.epochs=1"), run_dir=tmp_path / "r")
    torn = [tmp_path / "r" / "checkpoints" / "best.pt.tmp", tmp_path / "r" / "model.pt.tmp",
            tmp_path / "r" / "metrics.json.tmp"]
    for path in torn:
        path.write_bytes(b"half a file")
    result = fit(rr.recipe, rr.make_cfg("train.epochs=2"), run_dir=tmp_path / "r",
                 resume=tmp_path / "r" / "checkpoints" / "last.pt")
    assert result.status == "completed"
    assert [p for p in torn if p.exists()] == []


def _worse_each_epoch(model, batch, ctx):
    out = rr.forward_batch(model, batch, ctx)
    return out if model.training else rr.StepOutput(out.loss + ctx.epoch, out.metrics)


def test_a_resume_without_best_pt_returns_model_pt_as_its_best(tmp_path):
    """best.pt deleted by hand, a resume that never improves: the returned model is the
    best one (epoch 0's, in model.pt), not the last weights."""
    recipe = attrs.evolve(rr.recipe, forward_batch=_worse_each_epoch)
    run = tmp_path / "run"
    first = fit(recipe, rr.make_cfg("train.epochs=2"), run_dir=run)
    assert first.best_epoch == 0
    (run / "checkpoints" / "best.pt").unlink()
    best = load(run / "model.pt")
    result = fit(recipe, rr.make_cfg("train.epochs=4"), run_dir=run,
                 resume=run / "checkpoints" / "last.pt")
    assert result.status == "completed" and result.best_epoch == 0
    assert_same(result.model.state_dict(), best, "returned model")
    assert not torch.equal(load(run / "checkpoints" / "last.pt")["model"]["body.0.weight"],
                           best["body.0.weight"])
