"""Two workers share a study through a real PostgreSQL server (the trial store for many
machines): every pair runs once, both workers take part, Optuna's trials are in the
database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import engine

RECIPES = Path(__file__).with_name("recipes.toml")
pytestmark = pytest.mark.slow


def test_two_workers_on_postgresql(tmp_path, postgres_url):
    """--storage postgresql://... --workers 2: four pairs, each once, split over two workers."""
    done = engine("sweep", "tiny", "--grid", "model.width=2,4", "--seeds", "2", "--workers",
                  "2", "--storage", postgres_url, "--set", "train.epochs=4", "--set",
                  "model.step_sleep=0.1", cwd=tmp_path, recipes=RECIPES)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "artifacts" / "studies" / "tiny").iterdir()
    assert not (folder / "optuna.journal").exists()
    records = [json.loads(p.read_text()) for p in sorted((folder / "pairs").glob("*.json"))]
    assert len(records) == 4 and all(r["status"] == "completed" for r in records)
    assert len({r["run_id"] for r in records}) == 4
    assert len([p for p in (folder / "runs").iterdir()]) == 4
    assert len({r["worker"]["pid"] for r in records}) == 2   # both workers ran pairs

    import optuna

    from engine.study.store import open_storage
    study = optuna.load_study(study_name=folder.name, storage=open_storage(postgres_url, None))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    results = json.loads((folder / "results.json").read_text())
    means = {c["configuration"]: c["mean"] for c in results["configurations"]}
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(means.values()))
