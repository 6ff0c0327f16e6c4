"""A search study through Optuna's ask-and-tell (trial k is configuration k, told its mean),
and a sweep stopped by SIGTERM: exit 130, its run resumable, continued by --resume."""

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


def test_search_asks_and_tells_optuna(tmp_path):
    """--search with --trials 3: three configurations drawn in range, each trial told."""
    done = engine("sweep", "tiny", "--search", "train.learning_rate=loguniform:1e-3:1e-1",
                  "--search", "model.width=choice:2,4", "--trials", "3", "--sampler", "random",
                  cwd=tmp_path, recipes=RECIPES)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
    configs = [json.loads(p.read_text()) for p in sorted((folder / "configurations").iterdir())]
    assert [c["trial"] for c in configs] == [0, 1, 2]
    for c in configs:
        assert 1e-3 <= c["params"]["train.learning_rate"] <= 1e-1
        assert c["params"]["model.width"] in (2, 4)

    import optuna

    from engine.study.store import open_storage
    study = optuna.load_study(study_name=folder.name, storage=open_storage("journal", folder))
    results = json.loads((folder / "results.json").read_text())
    means = {c["configuration"]: c["mean"] for c in results["configurations"]}
    assert {t.number: t.value for t in study.trials} == pytest.approx(means)
    runs = [json.loads((p / "metrics.json").read_text()) for p in (folder / "runs").iterdir()]
    assert sorted(r["study"]["configuration"] for r in runs) == [0, 1, 2]


def test_sigterm_stops_the_sweep_resumably(tmp_path):
    """SIGTERM mid-run: exit 130, the pair marked interrupted with its checkpoint; --resume
    continues that run in its own directory to the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "engine", "sweep", "tiny", "--recipes", str(RECIPES), "--seeds",
         "2", "--set", "train.epochs=6", "--set", "model.step_sleep=0.05"], cwd=tmp_path,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        checkpoint = None
        while checkpoint is None:
            assert time.time() < deadline and sweep.poll() is None, sweep.communicate()
            found = list(tmp_path.glob("artifacts/studies/tiny/*/runs/*/checkpoints/last.pt"))
            checkpoint = found[0] if found else None
            time.sleep(0.05)
        sweep.send_signal(signal.SIGTERM)
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130, err
    assert "resume with: python -m engine sweep --resume" in err
    folder = checkpoint.parents[3]
    record = json.loads((folder / "pairs" / "c0000-r000.json").read_text())
    assert record["state"] == "interrupted"
    run_dir = folder / "runs" / record["run_id"]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    resumed = engine("sweep", "--resume", str(folder), cwd=tmp_path, recipes=RECIPES)
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads((folder / "pairs" / "c0000-r000.json").read_text())
    assert done["run_id"] == record["run_id"] and done["status"] == "completed"
    assert len(list((folder / "runs").iterdir())) == 2
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert history["epoch"] == list(range(6))
