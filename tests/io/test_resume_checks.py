"""`run --resume` from a checkpoint that does not fit the run (issue 14): exit 2 with one
message naming the checkpoint and what does not match, before anything is loaded or made; an
entry the resume can do without (scheduler, epoch_rng) is skipped with a warning.

Each case trains a real run (resume_recipe, one epoch), edits its saved last.pt with
torch.save, and resumes it through the command line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import resume_recipe as rr
import torch

from engine.cli import main


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the recipes.toml, a run directory trained for one epoch), made once."""
    folder = tmp_path_factory.mktemp("trained")
    registry = rr.write_registry(folder, train={"epochs": 1})
    assert main(["run", "tiny", "--recipes", str(registry), "--output-dir",
                 str(folder / "out")]) == 0
    (run,) = rr.run_dirs(folder / "out")
    return registry, run


def edited(trained, tmp_path, edit) -> tuple[Path, Path]:
    """A copy of the trained run whose last.pt went through `edit(dict)`."""
    registry, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "last.pt"
    data = torch.load(last, map_location="cpu", weights_only=True)
    edit(data)
    torch.save(data, last)
    return registry, copy


def split_groups(data):
    group = data["optimizer"]["param_groups"][0]
    data["optimizer"]["param_groups"] = [dict(group, params=group["params"][:2]),
                                         dict(group, params=group["params"][2:])]


def as_sgd(data):
    for group in data["optimizer"]["param_groups"]:
        for key in ("betas", "eps", "amsgrad"):
            group.pop(key, None)
        group.update(momentum=0.9, dampening=0.0, nesterov=False)


def wrong_state_shape(data):
    state = data["optimizer"]["state"][0]
    state["exp_avg"] = torch.zeros(3, 3)


def mid_epoch_without_epoch_rng(data):
    data["loop"].update(epoch=1, batch=2, totals={"lr": 0.01, "loss_sum": 1.0, "losses": 2,
                                                  "norm_sum": 0.0, "norms": 0, "clipped": 0,
                                                  "nonfinite": 0})
    data["epoch_rng"] = None


REFUSED = [
    ("groups-changed", split_groups,
     ["the optimizer's parameter groups changed", "1 group(s) of 4", "2 group(s) of 2, 2"]),
    ("other-optimizer", as_sgd, ["the optimizer is not the kind the run used", "momentum"]),
    ("state-shape", wrong_state_shape,
     ["the optimizer state does not fit the parameters", "shape (3, 3)"]),
    ("no-optimizer", lambda d: d.pop("optimizer"), ["no optimizer state", "no 'optimizer'"]),
    ("no-loop", lambda d: d.pop("loop"), ["no loop state", "no 'loop' entry"]),
    ("no-rng", lambda d: d.pop("rng"), ["no RNG state", "no 'rng' entry"]),
    ("loop-lacks-history", lambda d: d["loop"].pop("history"),
     ["the loop state lacks history"]),
    ("loop-epoch-text", lambda d: d["loop"].update(epoch="one"), ["loop.epoch is not an int"]),
    ("other-totals", lambda d: d["loop"].update(batch=1, totals={"loss": 1.0}),
     ["loop.totals does not hold this engine's epoch totals", "keys loss"]),
    ("model-not-a-dict", lambda d: d.update(model=[1, 2]),
     ["checkpoint does not fit the model", "list"]),
]


@pytest.mark.parametrize("case, edit, fragments", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_checkpoint_that_does_not_fit_is_refused(trained, tmp_path, capsys, case, edit,
                                                   fragments):
    """Exit 2, one error block naming last.pt and the mismatch, no traceback, and the run
    directory's files as they were."""
    registry, run = edited(trained, tmp_path, edit)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = main(["run", "tiny", "--recipes", str(registry), "--resume", str(run),
                 "--set", "train.epochs=2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert str(run / "checkpoints" / "last.pt") in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_foreign_checkpoint_that_does_not_fit_makes_no_run_dir(trained, tmp_path, capsys):
    """A checkpoint outside a run directory whose optimizer grouping changed: exit 2 before a
    new run directory exists."""
    registry, run = edited(trained, tmp_path, split_groups)
    loose = tmp_path / "loose.pt"
    shutil.copy(run / "checkpoints" / "last.pt", loose)
    out = tmp_path / "out"
    code = main(["run", "tiny", "--recipes", str(registry), "--resume", str(loose),
                 "--set", "train.epochs=2", "--output-dir", str(out)])
    assert code == 2
    assert "parameter groups changed" in capsys.readouterr().err
    assert rr.run_dirs(out) == []


SKIPPED = [
    ("no-scheduler", lambda d: d.update(scheduler=None),
     "holds no scheduler state that fits this run's ReduceLROnPlateau"),
    ("other-scheduler", lambda d: d.update(scheduler={"last_epoch": 3}),
     "holds no scheduler state that fits"),
    ("no-epoch-rng", mid_epoch_without_epoch_rng, "holds no RNG state for the start of epoch 2"),
]


@pytest.mark.parametrize("case, edit, warning", SKIPPED, ids=[c[0] for c in SKIPPED])
def test_what_a_resume_can_do_without_is_skipped_with_a_warning(trained, tmp_path, caplog,
                                                                case, edit, warning):
    """A missing or foreign scheduler state, or a mid-epoch checkpoint without its epoch's
    RNG state: the run goes on to the end (exit 0) and the engine logger says what it
    skipped."""
    registry, run = edited(trained, tmp_path, edit)
    with caplog.at_level("WARNING", logger="engine"):
        code = main(["run", "tiny", "--recipes", str(registry), "--resume", str(run),
                     "--set", "train.epochs=2"])
    assert code == 0
    assert any(warning in r.getMessage() for r in caplog.records), caplog.text
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["epoch"] == 2


def test_refused_resume_in_a_real_process(trained, tmp_path):
    """`python -m engine run tiny --resume RUN` on a checkpoint without its optimizer: exit 2,
    one block on stderr, no traceback."""
    registry, run = edited(trained, tmp_path, lambda d: d.pop("optimizer"))
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", "tiny", "--recipes", str(registry), "--resume",
         str(run), "--set", "train.epochs=2"], cwd=tmp_path, env=rr.subprocess_env(tmp_path),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "no optimizer state" in proc.stderr and "last.pt" in proc.stderr
