"""train.nan_policy: `stop` (invariant 10), `skip` and `rollback`, on a recipe whose loss is NaN
on chosen training batches (resume_recipe's `fault.nan_batches`, counted across the run).

The tiny recipe has 5 batches an epoch (40 samples, batch size 8), so batch 7 is the third
batch of epoch 1 and would be optimizer step 7 (0-based).
"""

from __future__ import annotations

import json
import math

import pytest
import resume_recipe as rr
import torch

from engine import Event, fit
from engine.cli import main
from engine.core.events import listens_to

FILES = ("checkpoints/best.pt", "checkpoints/last.pt", "model.pt")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_PLOTS", "inline")   # drawn here, and so patched out:
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)


def adam_steps(optimizer_state: dict) -> int:
    """How many updates Adam applied (its per-parameter step counter)."""
    steps = {int(s["step"]) for s in optimizer_state["state"].values()}
    assert len(steps) == 1
    return steps.pop()


def snapshot_files():
    """A callback that keeps the bytes of best.pt, last.pt and model.pt after every write."""
    seen: dict[str, bytes] = {}

    @listens_to(Event.CHECKPOINT_WRITTEN)
    def keep(event, state):
        for name in FILES:
            if (state.run.run_dir / name).exists():
                seen[name] = (state.run.run_dir / name).read_bytes()

    keep.seen = seen
    return keep


@pytest.mark.parametrize("every", [0, 2])
def test_stop_fails_naming_epoch_and_step_and_leaves_the_files_from_before(tmp_path, every):
    """Invariant 10: NaN at step 7 (epoch 1): status failed, error {epoch 1, step 7, message},
    best.pt / last.pt / model.pt byte-identical to the last ones written before it (also with
    mid-epoch checkpoints every 2 steps: the NaN is found before the next one is written)."""
    cfg = rr.make_cfg("fault.nan_batches=[7]", f"train.checkpoint_every_n_steps={every}")
    keep = snapshot_files()
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run", callbacks=(keep,))
    assert result.status == "failed"
    assert result.error["epoch"] == 1 and result.error["step"] == 7
    assert "epoch 2" in result.error["message"] and "step 8" in result.error["message"]
    for name in FILES:
        assert (tmp_path / "run" / name).read_bytes() == keep.seen[name], name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert metrics["history"]["epoch"] == [0]
    assert {k: metrics["error"][k] for k in ("epoch", "step")} == {"epoch": 1, "step": 7}
    assert "non-finite" in metrics["error"]["message"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["step"] == (6 if every else 5)
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_stop_exits_1_from_the_command_line(tmp_path, capsys):
    """The CLI: exit code 1 and a message naming the epoch and the step."""
    registry = rr.write_registry(tmp_path, fault={"nan_batches": [7]})
    assert main(["run", "tiny", "--recipes", str(registry)]) == 1
    err = capsys.readouterr().err
    assert "epoch 2, step 8" in err and "metrics.json" in err
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"


def test_skip_drops_the_update_and_counts_it(tmp_path):
    """skip: NaN batches 3 and 7 give no update (Adam's counter and the loop's step both lag by
    2), each is counted in its epoch's nonfinite_steps, and the run completes, finite."""
    cfg = rr.make_cfg("fault.nan_batches=[3, 7]", "train.nan_policy=\"skip\"")
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run")
    assert result.status == "completed"
    assert result.history["nonfinite_steps"] == [1, 1, 0]
    assert all(math.isfinite(v) for v in result.history["train_loss"])
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["step"] == 15 - 2
    assert adam_steps(last["optimizer"]) == 15 - 2
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["history"]["nonfinite_steps"] == [1, 1, 0]


def test_skip_drops_the_whole_accumulation_group(tmp_path):
    """skip with grad_accum_steps 2 (groups of batches (0, 1), (2, 3), (4) per epoch): a NaN in
    the first batch of a group drops that group's update entirely, not just the NaN batch's
    share of it (8 of 9 updates, and the group's finite batch makes none on its own)."""
    cfg = rr.make_cfg("fault.nan_batches=[5]", "train.nan_policy=\"skip\"",
                      "train.grad_accum_steps=2")
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run")
    assert result.status == "completed"
    assert result.history["nonfinite_steps"] == [0, 1, 0]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["step"] == 9 - 1
    assert adam_steps(last["optimizer"]) == 9 - 1


def test_skip_fails_after_max_skipped_steps(tmp_path, capsys):
    """skip with max_skipped_steps = 2 and three NaN batches: the third ends the run (exit 1)."""
    registry = rr.write_registry(tmp_path, train={"nan_policy": "skip", "max_skipped_steps": 2},
                                 fault={"nan_batches": [6, 7, 8]})
    assert main(["run", "tiny", "--recipes", str(registry)]) == 1
    err = capsys.readouterr().err
    assert "max_skipped_steps" in err
    (run,) = rr.run_dirs(tmp_path / "artifacts")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"]["epoch"] == 1
    assert metrics["history"]["epoch"] == [0]


def test_rollback_reloads_the_last_checkpoint_and_goes_on(tmp_path):
    """rollback: NaN at batch 7 reloads the state of the end of epoch 0 (Adam's counter drops
    back to 5) and training goes on with batch 8; the run completes, finite."""
    seen = {}

    @listens_to(Event.EPOCH_END)
    def counters(event, state):
        seen[state.epoch] = (state.step, adam_steps(state.run.optimizer.state_dict()))

    cfg = rr.make_cfg("fault.nan_batches=[7]", "train.nan_policy=\"rollback\"")
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run", callbacks=(counters,))
    assert result.status == "completed"
    # after epoch 1: the loop took 5 + 4 steps; Adam kept 5 + 2 (batches 8, 9 after the reload)
    assert seen == {1: (5, 5), 2: (9, 7), 3: (14, 12)}
    assert result.history["nonfinite_steps"] == [0, 1, 0]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_rollback_before_the_first_checkpoint_goes_back_to_the_start(tmp_path):
    """A NaN in epoch 0 (no last.pt yet) rolls back to the initial state (Adam starts over)."""
    seen = {}

    @listens_to(Event.EPOCH_END)
    def counters(event, state):
        seen[state.epoch] = (state.step, adam_steps(state.run.optimizer.state_dict()))

    cfg = rr.make_cfg("fault.nan_batches=[2]", "train.nan_policy=\"rollback\"",
                      "train.epochs=1")
    result = fit(rr.recipe, cfg, run_dir=tmp_path / "run", callbacks=(counters,))
    assert result.status == "completed"
    assert seen == {1: (4, 2)}   # batches 3 and 4 after going back to the start
