"""Studies end to end through the CLI: a grid with seeds, results.json's shape, the report
verb, a resume with another specification refused, failed runs kept and retried, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import engine

RECIPES = Path(__file__).with_name("recipes.toml")
pytestmark = pytest.mark.slow


def sweep(tmp_path: Path, *args: str, env: dict | None = None):
    return engine("sweep", *args, cwd=tmp_path, recipes=RECIPES, env=env)


def study_dir(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
    return found


def run_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "runs").iterdir() if p.is_dir())


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_grid_study_end_to_end(tmp_path):
    """A 2 x 3 grid study: six ordinary run directories tagged with their study block,
    results.json ranked with statistics and test figures, results.md, study.png, report."""
    done = sweep(tmp_path, "tiny", "--grid", "model.width=1,6", "--seeds", "3",
                 "--objective", "val_mae:min")
    assert done.returncode == 0, done.stderr
    folder = study_dir(tmp_path)
    runs = run_dirs(folder)
    assert len(runs) == 6
    # drawn once, at each run's end (no frames while it trained), and on disk by the exit
    assert all((r / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for r in runs)
    blocks = [metrics(r)["study"] for r in runs]
    assert {(b["configuration"], b["replicate"]) for b in blocks} == {
        (c, s) for c in (0, 1) for s in (0, 1, 2)}
    assert all(b["study_id"] == folder.name for b in blocks)
    assert {json.dumps(b["params"]) for b in blocks} == {'{"model.width": 1}',
                                                         '{"model.width": 6}'}
    results = json.loads((folder / "results.json").read_text())
    assert results["study_id"] == folder.name and results["recipe"] == "tiny"
    assert results["objective"] == {"metric": "val_mae", "direction": "min"}
    best, other = results["configurations"]
    assert best["mean"] <= other["mean"] and best["vs_best"] is None
    for c in (best, other):
        assert c["n"] == 3 and len(c["runs"]) == 3 and len(c["ci95"]) == 2
        assert {r["status"] for r in c["runs"]} == {"completed"}
        assert set(c["runs"][0]) == {"run_id", "replicate", "status", "value"}
        assert c["test"]["model.seed_plus_half"]["mean"] == pytest.approx(1.5)
        assert c["test"]["rows"] == {"mean": 16.0, "std": 0.0, "ci95": [16.0, 16.0]}
        assert "val_loss" in c["metrics"] and set(c["metrics"]["val_loss"]) == {"mean", "std"}
    vs = other["vs_best"]
    assert set(vs) >= {"mean_diff", "ci95", "p_value", "test", "verdict"}
    assert vs["mean_diff"] >= 0 and vs["verdict"] == "not distinguishable"
    assert vs["p_value"] >= 0.25   # three pairs: no exact p below 0.25
    text = (folder / "results.md").read_text()
    assert "smallest possible p is 0.25" in text and "model.width" in text
    assert (folder / "study.png").stat().st_size > 10_000
    assert (folder / "optuna.journal").stat().st_size > 0
    report = engine("report", str(folder), "--json", cwd=tmp_path, recipes=None)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["configurations"][0]["runs"] == best["runs"]

    # a resume with another specification is refused; the same one has nothing left to run
    again = sweep(tmp_path, "--resume", str(folder), "--grid", "model.width=1,8")
    assert again.returncode == 2 and "another grid" in again.stderr
    again = sweep(tmp_path, "--resume", str(folder), "--seeds", "2")
    assert again.returncode == 2 and "another replicates" in again.stderr
    again = sweep(tmp_path, "--resume", str(folder), "--seeds", "3", "--grid", "model.width=1,6")
    assert again.returncode == 0, again.stderr
    assert run_dirs(folder) == runs


def test_failed_runs_stay_failed_until_retried(tmp_path):
    """A failed run is reported (exit 1) and kept; --resume leaves it failed; --retry-failed
    runs it again in a new run directory, the failed one kept beside it."""
    failing = sweep(tmp_path, "tiny", "--seeds", "2", "--set", "model.fail_seed=1",
                    env={"STUDY_TEST_FAIL": "1"})
    assert failing.returncode == 1
    assert "1 failed" in failing.stderr and "--retry-failed" in failing.stderr
    folder = study_dir(tmp_path)
    (failed,) = [r for r in run_dirs(folder) if metrics(r)["status"] == "failed"]
    assert "failed" in (folder / "results.md").read_text()

    resumed = sweep(tmp_path, "--resume", str(folder))
    assert resumed.returncode == 1 and len(run_dirs(folder)) == 2

    retried = sweep(tmp_path, "--resume", str(folder), "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    runs = run_dirs(folder)
    assert len(runs) == 3 and metrics(failed)["status"] == "failed"
    record = json.loads((folder / "pairs" / "c0000-r001.json").read_text())
    assert record["status"] == "completed" and record["previous_runs"] == [failed.name]
    results = json.loads((folder / "results.json").read_text())
    assert results["runs_by_status"] == {"completed": 2}


def test_pruned_run_ends_with_status_pruned(tmp_path):
    """--prune: a run the median pruner stops ends cleanly, status pruned, exit 0."""
    done = sweep(tmp_path, "tiny", "--grid", "train.learning_rate=0.1,0.05,1e-7",
                 "--set", "train.epochs=4", "--prune")
    assert done.returncode == 0, done.stderr
    folder = study_dir(tmp_path)
    by_config = {metrics(r)["study"]["configuration"]: metrics(r) for r in run_dirs(folder)}
    assert by_config[0]["status"] == by_config[1]["status"] == "completed"
    slow = by_config[2]
    assert slow["status"] == "pruned"
    assert len(slow["history"]["epoch"]) < 4
    assert (folder / "runs" / slow["run_id"] / "checkpoints" / "last.pt").is_file()
    results = json.loads((folder / "results.json").read_text())
    assert results["runs_by_status"] == {"completed": 2, "pruned": 1}
    assert results["configurations"][-1]["n"] == 0   # a pruned run is not counted
