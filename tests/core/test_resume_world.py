"""A mid-epoch checkpoint resumes only with the number of processes that wrote it (its epoch's
data order is that of its shards); an epoch-end checkpoint resumes with any number."""

from __future__ import annotations

import pytest
import resume_recipe as rr
import torch

from engine import UserError, fit
from engine.core.distributed import check_resume_world


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)


def _as_if_written_by(path, world_size: int):
    data = torch.load(path, map_location="cpu", weights_only=True)
    data["world_size"] = world_size
    torch.save(data, path)
    return data


def test_a_mid_epoch_checkpoint_of_two_processes_is_refused_in_one(tmp_path):
    """last.pt written at step 3 of 5 by "2 processes", resumed by one: a UserError naming the
    file and both counts, before anything trains."""
    cfg = rr.make_cfg("train.epochs=1", "train.checkpoint_every_n_steps=3")
    run = tmp_path / "run"
    stopped = []

    def stop_after_checkpoint(event, state):
        if state.step == 3 and not stopped:
            stopped.append(1)
            raise KeyboardInterrupt

    from engine import Event
    from engine.core.events import listens_to
    cb = listens_to(Event.CHECKPOINT_WRITTEN)(stop_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(rr.recipe, cfg, run_dir=run, callbacks=(cb,))
    last = run / "checkpoints" / "last.pt"
    data = _as_if_written_by(last, 2)
    assert data["loop"]["batch"] == 3
    with pytest.raises(UserError) as info:
        fit(rr.recipe, cfg, run_dir=run, resume=last)
    text = str(info.value)
    assert "mid-epoch" in text and "2 processes" in text and "1 process" in text
    assert str(last) in text
    # with the number it was written by, it resumes
    _as_if_written_by(last, 1)
    assert fit(rr.recipe, cfg, run_dir=run, resume=last).status == "completed"


def test_an_epoch_end_checkpoint_resumes_with_any_number_of_processes(tmp_path):
    """last.pt of a completed epoch (loop.batch == 0) written by 2 processes resumes in one."""
    run = tmp_path / "run"
    fit(rr.recipe, rr.make_cfg("train.epochs=1"), run_dir=run)
    last = run / "checkpoints" / "last.pt"
    assert _as_if_written_by(last, 2)["loop"]["batch"] == 0
    result = fit(rr.recipe, rr.make_cfg("train.epochs=2"), run_dir=run, resume=last)
    assert result.status == "completed" and result.history["epoch"] == [0, 1]


@pytest.mark.parametrize(("saved", "now", "batch", "refused"), [
    (2, 1, 3, True), (1, 4, 1, True), (4, 4, 2, False), (2, 1, 0, False), (None, 2, 3, False)])
def test_check_resume_world(saved, now, batch, refused):
    """Refused exactly when mid-epoch (batch > 0) and the counts differ; an old checkpoint
    without world_size is taken as it is."""
    data = {"loop": {"epoch": 0, "batch": batch}}
    if saved is not None:
        data["world_size"] = saved
    if refused:
        with pytest.raises(UserError, match=f"--nproc_per_node={saved}|one process"):
            check_resume_world(data, now, "last.pt")
    else:
        check_resume_world(data, now, "last.pt")
