"""`engine runs`: every past run (studies' included), newest first, from its files alone; a
folder that is not a run is one line on stderr, never a traceback."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pytest
from helpers import engine, run_dirs

from engine.tools.runs import table

KEYS = ["run_id", "recipe", "status", "epochs", "best_epoch", "best_val_loss", "started",
        "duration_s", "study_id", "run_dir"]


@pytest.fixture(scope="module")
def past_runs(tmp_path_factory):
    """Two real autoencoder runs, a study's run, an empty folder and a torn metrics.json."""
    cwd = tmp_path_factory.mktemp("runs")
    for lr in ("1e-3", "3e-3"):
        done = engine("run", "autoencoder", "--set", "train.epochs=2", "--set",
                      f"train.learning_rate={lr}", cwd=cwd)
        assert done.returncode == 0, done.stderr
    first, second = run_dirs(cwd, "autoencoder")
    study_run = cwd / "artifacts" / "studies" / "autoencoder" / "lr-sweep" / "runs" / \
        "20200101-000000-beef"
    shutil.copytree(first, study_run)
    metrics = json.loads((study_run / "metrics.json").read_text())
    metrics.update(run_id=study_run.name, study={"study_id": "lr-sweep", "replicate": 0})
    (study_run / "metrics.json").write_text(json.dumps(metrics))
    started = dt.datetime(2020, 1, 1).astimezone().timestamp()
    os.utime(study_run / "metrics.json", (started + 30, started + 30))
    root = cwd / "artifacts" / "models" / "autoencoder" / "runs"
    (root / "not-a-run").mkdir()
    torn = root / "20200101-000001-dead"
    shutil.copytree(second, torn)
    text = (torn / "metrics.json").read_text()
    (torn / "metrics.json").write_text(text[: len(text) // 2])
    return cwd, first, second, study_run


def test_json_lists_every_run_newest_first(past_runs):
    cwd, first, second, study_run = past_runs
    done = engine("runs", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [r["run_id"] for r in listed] == [second.name, first.name, study_run.name]
    for row, run_dir in zip(listed, (second, first)):
        assert list(row) == KEYS
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["recipe"] == "autoencoder" and row["status"] == "completed"
        assert row["epochs"] == 2 and row["study_id"] is None
        assert (row["best_epoch"], row["best_val_loss"]) == (metrics["best"]["epoch"],
                                                             metrics["best"]["val_loss"])
        local = dt.datetime.strptime(run_dir.name[:15], "%Y%m%d-%H%M%S").astimezone()
        assert dt.datetime.fromisoformat(row["started"]) == local
        assert row["started"].endswith("Z")
        assert 0 <= row["duration_s"] < 600
        assert (cwd / row["run_dir"]).resolve() == run_dir.resolve()
    assert listed[2]["duration_s"] == 30.0
    assert listed[2]["study_id"] == "lr-sweep"


def test_broken_folders_are_one_line_each_on_stderr(past_runs):
    cwd = past_runs[0]
    done = engine("runs", cwd=cwd)
    assert done.returncode == 0
    problems = done.stderr.strip().splitlines()
    assert len(problems) == 2 and "Traceback" not in done.stderr
    assert any("not-a-run: not a run (no metrics.json)" in p for p in problems)
    assert any("20200101-000001-dead: metrics.json is torn" in p for p in problems)
    assert len(done.stdout.strip().splitlines()) == 4   # header and three runs


def test_the_table_fits_the_terminal(past_runs):
    cwd, first, second, _ = past_runs
    done = engine("runs", "autoencoder", cwd=cwd, env={"COLUMNS": "80"})
    lines = done.stdout.strip().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split()[:3] == ["RUN_ID", "RECIPE", "STATUS"]
    assert lines[1].split()[:5] == [second.name, "autoencoder", "completed", "2", "2"]


def test_a_name_filters_and_output_dir_points_elsewhere(past_runs, tmp_path):
    cwd = past_runs[0]
    done = engine("runs", "ranking_v2", "--output-dir", str(cwd / "artifacts"), "--json",
                  cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout) == []
    done = engine("runs", cwd=tmp_path)
    assert done.returncode == 0 and "no runs under artifacts" in done.stderr


def test_a_running_run_counts_its_duration_so_far(past_runs, tmp_path):
    """status running: duration is now - start, not metrics.json's last write."""
    _, first, _, _ = past_runs
    run_dir = tmp_path / "models" / "autoencoder" / "runs" / "20200101-000000-0000"
    shutil.copytree(first, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    done = engine("runs", "--output-dir", str(tmp_path), "--json", cwd=tmp_path)
    (row,) = json.loads(done.stdout)
    started = dt.datetime(2020, 1, 1).astimezone()
    assert row["duration_s"] >= (dt.datetime.now().astimezone() - started).total_seconds() - 60


def test_table_cuts_long_recipe_and_study_names():
    from engine.tools.runs import RunInfo
    row = RunInfo("20260101-000000-abcd", "r" * 40, "completed", 3, 1, 0.5,
                  "2026-01-01T00:00:00Z", 12.0, "s" * 40, "x")
    for width in (100, 80):
        lines = table([row], width).splitlines()
        assert max(len(line) for line in lines) <= width
        assert "~" in lines[1] and lines[1].startswith("20260101-000000-abcd")
    assert "STARTED (UTC)" in table([row], 200) and "~" not in table([row], 200)


# metrics.json parsed but of the wrong shape: (folder suffix, change to the real file, the field
# the skip line must name)
DAMAGED = [
    ("best", {"best": "x"}, '"best" is "x", not an object'),
    ("hist", {"history": []}, '"history" is [], not an object'),
    ("stat", {"status": 5}, '"status" is 5, not a non-empty string'),
    ("epch", {"best": {"epoch": 7, "val_loss": 0.1}}, 'best["epoch"] is 7'),
    ("stdy", {"study": "lr-sweep"}, '"study" is "lr-sweep", not an object'),
    ("col", {"history": {"epoch": "01"}}, 'history["epoch"] is "01", not a list'),
]


def test_a_damaged_metrics_json_is_skipped_like_a_torn_one(past_runs, tmp_path):
    """Wrong shapes (and a JSON list at top level) are one 'damaged' line each naming the folder,
    the file and the field; the sound run is still listed and the exit code is 0."""
    _, first, _, _ = past_runs
    root = tmp_path / "models" / "autoencoder" / "runs"
    shutil.copytree(first, root / first.name)
    metrics = json.loads((first / "metrics.json").read_text())
    for suffix, change, _ in DAMAGED:
        folder = root / f"20200101-000000-{suffix}"
        shutil.copytree(first, folder)
        (folder / "metrics.json").write_text(json.dumps({**metrics, **change}))
    shutil.copytree(first, root / "20200101-000000-list")
    (root / "20200101-000000-list" / "metrics.json").write_text("[1, 2]")
    done = engine("runs", "--output-dir", str(tmp_path), "--json", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)] == [first.name]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == len(DAMAGED) + 1
    for suffix, _, field in [*DAMAGED, ("list", None, "a JSON list, not an object")]:
        (line,) = [x for x in lines if f"20200101-000000-{suffix}:" in x]
        assert "metrics.json is damaged" in line and field in line, line


def test_an_output_dir_that_is_a_file_is_exit_2(tmp_path):
    (tmp_path / "artifacts").write_text("not a folder")
    for args in (["--output-dir", str(tmp_path / "artifacts")], []):
        done = engine("runs", *args, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "error: the output directory is a file" in done.stderr
        assert "artifacts is a file, not a folder" in done.stderr
