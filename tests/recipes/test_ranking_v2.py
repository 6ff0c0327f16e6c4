"""ranking_v2 end to end: a short run through engine.fit and one through the command line."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import fit
from engine.io.layering import Layer, build_config, parse_set
from recipes.ranking_v2 import recipe
from recipes.ranking_v2.baselines import baselines_of, best_validation

ROOT = Path(__file__).resolve().parents[2]

# small enough for a few seconds on 2 cores, big enough to learn: fixed seed
SMALL = ["train.epochs=6", "train.batch_size=32", "train.seed=0", 'train.device="cpu"',
         "model.hidden_dim=32", "model.ff_dim=64", "data.synthetic_datasets=200",
         "data.synthetic_models=20"]


def small_config(tmp_path, *extra):
    layers = [Layer({"train": {"output_dir": str(tmp_path / "out")}}, "test")]
    layers += [parse_set(flag) for flag in (*SMALL, *extra)]
    return build_config(recipe.config, layers)


@pytest.mark.parametrize("loss", ["listnet", "listmle", "ranknet"])
def test_a_short_fit_beats_random_and_popularity(tmp_path, caplog, loss):
    """Best validation NDCG@5 and regret@1 beat both baselines by a clear margin."""
    cfg = small_config(tmp_path, f'model.loss="{loss}"')
    with caplog.at_level(logging.INFO, logger="recipes.ranking_v2"):
        result = fit(recipe, cfg)
    best = best_validation(result.history, result.best_epoch)
    base = baselines_of(recipe.build_loaders(cfg))
    for name in ("random", "popularity"):
        assert best["ndcg_at_5"] > base[name]["ndcg_at_5"] + 0.05, (name, best, base)
        assert best["regret_at_1"] < base[name]["regret_at_1"] - 0.03, (name, best, base)
    assert base["oracle"]["ndcg_at_5"] == pytest.approx(1.0)
    assert "against the baselines" in caplog.text and "popularity" in caplog.text
    assert set(result.history) >= {f"val_{m}" for m in ("ndcg_at_1", "ndcg_at_3", "ndcg_at_5",
                                                        "kendall_tau", "top1_hit",
                                                        "regret_at_1")}


def _cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path),
           "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", "ranking_v2", "--recipes",
         str(ROOT / "recipes.toml"), *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300)


@pytest.mark.slow
def test_the_command_line_run_writes_baselines(tmp_path):
    """`python -m engine run ranking_v2` finishes, and metrics.json holds the baselines."""
    sets = [a for flag in SMALL[:1] + SMALL[2:] for a in ("--set", flag)]
    done = _cli(tmp_path, *sets, "--set", "train.epochs=3")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "artifacts" / "models" / "ranking_v2" / "runs").iterdir())
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"random", "popularity", "oracle"}
    for figures in metrics["baselines"].values():
        assert set(figures) == {"ndcg_at_1", "ndcg_at_3", "ndcg_at_5", "kendall_tau",
                                "top1_hit", "regret_at_1"}
    assert len(metrics["history"]["val_ndcg_at_5"]) == 3
    data_files = list((tmp_path / "artifacts" / "data").glob("ranking_v2-synthetic-*.pt"))
    assert len(data_files) == 1


@pytest.mark.slow
def test_a_bad_data_file_exits_2_and_writes_no_run(tmp_path):
    """A missing data file: exit code 2, the file named on stderr, no run directory."""
    done = _cli(tmp_path, "--set", f'data.path="{tmp_path / "missing.pt"}"')
    assert done.returncode == 2, done.stderr[-3000:]
    assert "data file not found" in done.stderr and "missing.pt" in done.stderr
    assert "Traceback" not in done.stderr
    runs = tmp_path / "artifacts" / "models" / "ranking_v2" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow
def test_a_forced_input_dim_exits_2_naming_both_shapes(tmp_path):
    """--set model.input_dim that disagrees with the data: exit 2, both shapes named."""
    done = _cli(tmp_path, "--set", "data.synthetic_datasets=20", "--set",
                "model.input_dim=7")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "input_dim = 7" in done.stderr and "dataset_tokens [20, 16, 32]" in done.stderr
