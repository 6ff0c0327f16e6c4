"""Trackers (DESIGN.md 8): train.loggers and train.mlflow_uri, and what each tracker writes,
read back with the real readers (MlflowClient, TensorBoard's EventAccumulator, csv)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, engine, run_dirs

from engine.core import config as core_config
from engine.core.errors import UserError
from engine.io.fit import fit
from engine.io.layering import parse_set, read_toml, to_toml
from engine.io.registry import resolve

RECIPES = ROOT / "recipes.toml"


def autoencoder(tmp_path: Path, *sets: str):
    output = f"train.output_dir={json.dumps(str(tmp_path))}"
    _, recipe, cfg = resolve("autoencoder", recipes=RECIPES,
                             sets=["train.epochs=2", output, *sets])
    return recipe, cfg


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed once the socket is: nothing listens there


# --- the config fields ----------------------------------------------------------------------

def test_loggers_round_trip_through_set_and_config_toml(tmp_path):
    """--set 'train.loggers=["mlflow","csv"]' gives a tuple; config.toml gives it back."""
    _, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow","csv"]',
                         "train.mlflow_uri=http://127.0.0.1:5000")
    assert cfg.train.loggers == ("mlflow", "csv")
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    _, _, again = resolve("autoencoder", recipes=RECIPES, config_file=tmp_path / "config.toml")
    assert again == cfg
    assert core_config.TrainConfig(loggers=["csv"]).loggers == ("csv",)


@pytest.mark.parametrize("flag, what, hint", [
    ('train.loggers=["mlfow"]', "invalid value for 'train.loggers'", "did you mean 'mlflow'?"),
    ("train.loggers=csv", "wrong type for config key 'train.loggers'", None),
    ("train.loggers=[1]", "wrong type for config key 'train.loggers'", None),
    ("train.mlflow_uri=sqlite://x.db", "invalid value for 'train.mlflow_uri'", None),
    ("train.mlflow_uri=http://:5000", "invalid value for 'train.mlflow_uri'", None),
    ("train.mlflow_uri=mlflow.db", "invalid value for 'train.mlflow_uri'", None),
])
def test_bad_logger_settings_are_user_errors(tmp_path, flag, what, hint):
    with pytest.raises(UserError) as info:
        autoencoder(tmp_path, flag)
    assert info.value.what == what
    assert info.value.where == parse_set(flag).source
    if hint:
        assert info.value.hint == hint
        assert '"tensorboard", "mlflow", "csv"' in info.value.expected


def test_a_logger_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(core_config.LOGGERS, "mlflow", "no_such_package_for_engine_tests")
    with pytest.raises(UserError) as info:
        autoencoder(tmp_path, 'train.loggers=["mlflow"]')
    assert info.value.hint == 'pip install -e ".[trackers]"'


def test_an_unknown_logger_exits_2_before_anything_runs(tmp_path):
    done = engine("run", "autoencoder", "--set", 'train.loggers=["csv","tensorbord"]',
                  cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "did you mean 'tensorboard'?" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()


# --- what the trackers write ----------------------------------------------------------------

def test_no_loggers_imports_neither_library(tmp_path):
    """A run without train.loggers never imports mlflow or torch.utils.tensorboard."""
    code = (
        "import sys\n"
        "from engine.io.fit import fit\n"
        "from engine.io.registry import resolve\n"
        f"_, recipe, cfg = resolve('autoencoder', recipes={str(RECIPES)!r}, "
        "sets=['train.epochs=1'])\n"
        f"r = fit(recipe, cfg, run_dir={str(tmp_path / 'run')!r})\n"
        "assert r.status == 'completed'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')"
        " or m.startswith('torch.utils.tensorboard') or m.startswith('engine.io.trackers.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_csv_and_tensorboard_hold_every_validation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["csv","tensorboard"]',
                              "train.epochs=3", "train.log_every_n_steps=5")
    result = fit(recipe, cfg, run_dir=tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(history)
    assert [float(r["val_loss"]) for r in rows] == history["val_loss"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for column in history:
        if column != "epoch":
            assert [(s.step, pytest.approx(s.value)) for s in events.Scalars(column)] == [
                (e, v) for e, v in zip(history["epoch"], history[column])]
    steps = [s.step for s in events.Scalars("train_loss_step")]
    assert steps == sorted(set(steps)) and len(steps) >= result.state.step // 5 - 1
    assert events.Scalars("best/val_loss")[0].value == pytest.approx(result.best_val_loss)
    assert "best/val_explained_variance" in scalars
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"train.learning_rate" in hparams["_hparams_/session_start_info"]


def test_a_tracker_that_cannot_write_logs_one_warning_and_the_run_goes_on(tmp_path):
    """tensorboard/ taken by a file (as a full disk would): one warning, the run completes."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tensorboard").write_text("not a folder")
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["tensorboard","csv"]')
    result = fit(recipe, cfg, run_dir=run_dir)
    assert result.status == "completed"
    log = (run_dir / "train.log").read_text()
    assert log.count("tracker tensorboard is off") == 1
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3


# --- mlflow ---------------------------------------------------------------------------------

def test_mlflow_records_the_run_and_a_resume_continues_it(tmp_path):
    from mlflow.tracking import MlflowClient
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow"]', "train.epochs=1")
    run_dir = tmp_path / "models" / "autoencoder" / "runs" / "20260101-000000-abcd"
    fit(recipe, cfg, run_dir=run_dir, name="autoencoder",
        metrics_extra={"study": {"study_id": "s-1"}})
    mlflow_id = json.loads((run_dir / "metrics.json").read_text())["mlflow"]["run_id"]
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow"]', "train.epochs=2")
    fit(recipe, cfg, run_dir=run_dir, name="autoencoder",
        resume=run_dir / "checkpoints" / "last.pt")

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autoencoder")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == mlflow_id
    assert found.info.run_name == run_dir.name and found.info.status == "FINISHED"
    assert found.data.tags["engine.status"] == "completed"
    assert found.data.tags["engine.run_dir"] == str(run_dir.resolve())
    assert found.data.tags["engine.study_id"] == "s-1"
    assert found.data.tags["engine.resumed_with.train.epochs"] == "2"
    assert found.data.params["train.learning_rate"] == str(cfg.train.learning_rate)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    logged = client.get_metric_history(mlflow_id, "val_loss")
    assert [(m.step, m.value) for m in logged] == list(zip(history["epoch"], history["val_loss"]))
    artifacts = {a.path for a in client.list_artifacts(mlflow_id)}
    assert {"metrics.png", "config.toml"} <= artifacts
    assert not (Path.cwd() / "mlruns").exists() and str(tmp_path) in experiment.artifact_location


def test_two_runs_at_once_on_one_sqlite_store_are_both_recorded(tmp_path):
    from mlflow.tracking import MlflowClient
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("ENGINE_DEBUG", None)
    args = [sys.executable, "-m", "engine", "run", "autoencoder", "--recipes", str(RECIPES),
            "--set", "train.epochs=2", "--set", 'train.loggers=["mlflow"]']
    procs = [subprocess.Popen([*args, "--set", f"train.learning_rate={lr}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for lr in (1e-3, 3e-3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any("tracker mlflow is off" in out for out in outputs), outputs
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'artifacts' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autoencoder")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [d.name for d in run_dirs(tmp_path,
                                                                              "autoencoder")]
    assert sorted(r.data.params["train.learning_rate"] for r in runs) == ["0.001", "0.003"]
    assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 2 for r in runs)


def test_an_unreachable_mlflow_server_costs_seconds_and_one_warning(tmp_path):
    started = time.monotonic()
    done = engine("run", "autoencoder", "--set", "train.epochs=2", "--set",
                  'train.loggers=["mlflow","csv"]', "--set",
                  f"train.mlflow_uri=http://127.0.0.1:{closed_port()}", cwd=tmp_path)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    (run_dir,) = run_dirs(tmp_path, "autoencoder")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    log = (run_dir / "train.log").read_text()
    assert log.count("tracker mlflow is off") == 1 and "Traceback" not in log
    assert done.stdout.count("tracker mlflow is off") == 1 and "Traceback" not in done.stderr
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    assert seconds < 90   # a process start, torch and mlflow imports; MLflow's own retries: minutes
    assert read_toml(run_dir / "config.toml", "config")["train"]["loggers"] == ["mlflow", "csv"]


def test_a_locked_sqlite_store_logs_one_warning_within_seconds(tmp_path):
    """Another process holds the database (an exclusive lock): the run ends normally."""
    import sqlite3

    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow","csv"]', "train.epochs=1")
    fit(recipe, cfg, run_dir=tmp_path / "first")          # makes the database
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        result = fit(recipe, cfg, run_dir=tmp_path / "second")
        seconds = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.status == "completed"
    log = (tmp_path / "second" / "train.log").read_text()
    assert log.count("tracker mlflow is off") == 1 and "Traceback" not in log
    assert (tmp_path / "second" / "metrics.csv").exists()
    assert seconds < 60


def test_a_resume_whose_mlflow_run_is_gone_starts_a_new_one(tmp_path):
    from mlflow.tracking import MlflowClient
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow"]', "train.epochs=1")
    run_dir = tmp_path / "run"
    fit(recipe, cfg, run_dir=run_dir, name="autoencoder")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["mlflow"]["run_id"] = "0" * 32        # e.g. a store made again since
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow"]', "train.epochs=2")
    result = fit(recipe, cfg, run_dir=run_dir, name="autoencoder",
                 resume=run_dir / "checkpoints" / "last.pt")
    assert result.status == "completed"
    new_id = json.loads((run_dir / "metrics.json").read_text())["mlflow"]["run_id"]
    assert new_id != "0" * 32
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(new_id).data.tags["engine.status"] == "completed"
    assert "tracker mlflow is off" not in (run_dir / "train.log").read_text()


def test_only_rank_0_tracks(tmp_path):
    """Under torchrun every rank builds its writers; the trackers come only on rank 0."""
    from types import SimpleNamespace

    from engine.io.trackers import trackers_for
    _, cfg = autoencoder(tmp_path, 'train.loggers=["csv","tensorboard","csv"]')
    run = SimpleNamespace(rank=0, run_dir=tmp_path, cfg=cfg)
    assert [t.name for t in trackers_for(run)] == ["csv", "tensorboard"]
    assert trackers_for(SimpleNamespace(rank=1, run_dir=tmp_path, cfg=cfg)) == ()


@pytest.mark.parametrize("where", ["a folder", "not a database"])
def test_a_tracking_uri_that_is_no_database_file_warns_once_within_seconds(tmp_path, where):
    """sqlite:/// naming a folder, or a file of the user's that is not a database: one warning
    naming it, the run completes, the file is untouched, and MLflow's own retries of the
    database (about 100 s) are not waited out."""
    target = tmp_path / "store"
    if where == "a folder":
        target.mkdir()
    else:
        target.write_bytes(b"my notes, not a database\n")
    before = None if target.is_dir() else target.read_bytes()
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow","csv"]', "train.epochs=1",
                              f'train.mlflow_uri="sqlite:///{target}"')
    started = time.monotonic()
    result = fit(recipe, cfg, run_dir=tmp_path / "run")
    seconds = time.monotonic() - started
    assert result.status == "completed"
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("tracker mlflow is off") == 1 and "Traceback" not in log
    if where == "a folder":
        assert f"sqlite:///{target} names a folder, not a database file" in log
    else:
        assert target.read_bytes() == before
    assert (tmp_path / "run" / "metrics.csv").exists()
    assert seconds < 40


def test_a_sqlite_store_in_a_folder_not_made_yet_is_made_and_recorded(tmp_path):
    """sqlite:/// in folders that do not exist yet: made, as MLflow itself makes them."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'deep' / 'er' / 'mlflow.db'}"
    recipe, cfg = autoencoder(tmp_path, 'train.loggers=["mlflow"]', "train.epochs=1",
                              f'train.mlflow_uri="{uri}"')
    result = fit(recipe, cfg, run_dir=tmp_path / "run")
    assert result.status == "completed"
    assert "tracker mlflow is off" not in (tmp_path / "run" / "train.log").read_text()
    run_id = json.loads((tmp_path / "run" / "metrics.json").read_text())["mlflow"]["run_id"]
    assert MlflowClient(tracking_uri=uri).get_run(run_id).data.tags["engine.status"] == \
        "completed"
