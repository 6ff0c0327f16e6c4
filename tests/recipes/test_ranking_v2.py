"""ranking_v2 end to end: a short run through engine.fit and one through the command line."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import fit
from engine.io.layering import Layer, build_config, parse_set
from recipes.ranking_v2 import recipe
from recipes.ranking_v2.baselines import baselines_of, best_validation
from recipes.ranking_v2.report import score_lists
from steps.ranking import METRICS

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
    assert set(result.history) >= {f"val_{m}" for m in METRICS}


def test_the_test_figures_use_the_best_weights_once(tmp_path, caplog):
    """A run whose best epoch is not its last: `test` holds the held-out lists scored with the
    best weights (not the last ones), beside the baselines; the table shows both parts."""
    cfg = small_config(tmp_path, "train.epochs=4", "train.learning_rate=1e-2")
    with caplog.at_level(logging.INFO, logger="recipes.ranking_v2"):
        result = fit(recipe, cfg)
    assert result.best_epoch is not None and result.best_epoch < result.history["epoch"][-1]
    test = result.state.run.metrics_extra["test"]
    assert set(test) == {"model", "random", "popularity", "oracle"}
    assert all(set(figures) == set(METRICS) for figures in test.values())
    held_out = result.state.run.loaders.val.dataset.held_out
    # result.model holds the best weights (train.device is cpu)
    best = score_lists(result.model, result.model.state_dict(), held_out, torch.device("cpu"),
                       32)
    assert best == pytest.approx(test["model"], abs=1e-6)
    assert test["model"]["weighted_tau"] > test["random"]["weighted_tau"] + 0.3
    assert test["oracle"]["rel_at_1"] == pytest.approx(1.0)
    assert caplog.text.count("held-out test") == 1
    assert "  test ---" in caplog.text and "  val ---" in caplog.text


def _cli(tmp_path, *args, verb="run"):
    temp = tmp_path / "tmp" if (tmp_path / "tmp").is_dir() else tmp_path
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp),
           "OMP_WAIT_POLICY": "PASSIVE", "MPLCONFIGDIR": str(temp)}
    return subprocess.run(
        [sys.executable, "-m", "engine", verb, "ranking_v2", "--recipes",
         str(ROOT / "recipes.toml"), *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300)


@pytest.mark.slow
def test_the_command_line_run_writes_split_baselines_and_test(tmp_path):
    """`python -m engine run ranking_v2` finishes; metrics.json holds the split (a partition of
    the datasets), the val baselines and the test figures; train.log has the final table."""
    sets = [a for flag in SMALL[:1] + SMALL[2:] for a in ("--set", flag)]
    done = _cli(tmp_path, *sets, "--set", "train.epochs=3", "--set", "data.synthetic_datasets=60")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "artifacts" / "models" / "ranking_v2" / "runs").iterdir())
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    split = metrics["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(60))
    assert len(split["test"]) == 9 and len(split["val"]) == 10
    for entry in ("baselines", "test"):
        assert set(metrics[entry]) >= {"random", "popularity", "oracle"}
        for figures in metrics[entry].values():
            assert set(figures) == set(METRICS)
    assert set(metrics["test"]["model"]) == set(METRICS)
    assert len(metrics["history"]["val_weighted_tau"]) == 3
    assert len(metrics["history"]["val_rel_at_1"]) == 3
    assert "held-out test" in (runs[0] / "train.log").read_text()
    data_files = list((tmp_path / "artifacts" / "data").glob("ranking_v2-synthetic-*.pt"))
    assert len(data_files) == 1


@pytest.mark.slow
def test_an_out_of_range_fold_exits_2_with_one_message_and_no_files(tmp_path):
    """--set data.fold=7 --set data.folds=5: exit 2, one error naming data.fold, nothing
    written (no run folder, no data cache)."""
    (tmp_path / "tmp").mkdir()
    done = _cli(tmp_path, "--set", "data.fold=7", "--set", "data.folds=5")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("error:") == 1 and "'data.fold'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_check_writes_nothing(tmp_path):
    """`python -m engine check ranking_v2` passes on synthetic data and writes no file (the
    data is generated in memory; only a run caches it)."""
    (tmp_path / "tmp").mkdir()
    done = _cli(tmp_path, "--set", "data.synthetic_datasets=40", "--set",
                "data.synthetic_models=12", "--set", "model.hidden_dim=16", "--set",
                "model.ff_dim=32", verb="check")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 FAIL" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


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


def test_a_finished_run_resumed_without_test_figures_gets_them_at_fit_end(tmp_path):
    """The FIT_END path: a finished run whose metrics.json lacks `test` (resumed with no epoch
    left) is evaluated at FIT_END, after the metrics writer, and the file is rewritten."""
    cfg = small_config(tmp_path, "train.epochs=2", "data.synthetic_datasets=60")
    run_dir = tmp_path / "run"
    fit(recipe, cfg, run_dir=run_dir)
    path = run_dir / "metrics.json"
    first = json.loads(path.read_text())
    assert set(first["test"]) == {"model", "random", "popularity", "oracle"}
    path.write_text(json.dumps({k: v for k, v in first.items() if k != "test"}))
    result = fit(recipe, cfg, run_dir=run_dir, resume=run_dir / "checkpoints" / "last.pt")
    assert result.history["epoch"] == [0, 1]  # nothing was trained again
    again = json.loads(path.read_text())
    for ranker, figures in first["test"].items():
        assert again["test"][ranker] == pytest.approx(figures, abs=1e-6), ranker
    assert again["split"] == first["split"] and again["status"] == first["status"]
