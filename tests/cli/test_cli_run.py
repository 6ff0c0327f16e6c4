"""End to end through `python -m engine`: a run's files, list, show, import side effects."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import tomllib
import torch
from helpers import ROOT, engine, run_dirs


def test_run_writes_every_file_of_a_run(tmp_path):
    done = engine("run", "autoencoder", "--set", "train.epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = run_dirs(tmp_path, "autoencoder")
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_dir.name)
    assert f"run directory: {run_dir.relative_to(tmp_path)}" in done.stdout
    assert "run completed" in done.stdout
    for name in ("config.toml", "metrics.json", "model.pt", "metrics.png", "train.log",
                 "beautilog.ini", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["recipe"] == "autoencoder" and metrics["run_id"] == run_dir.name
    assert metrics["status"] == "completed"
    history = metrics["history"]
    assert history["epoch"] == [0, 1]
    assert {len(v) for v in history.values()} == {2}
    assert {"train_loss", "val_loss", "learning_rate", "grad_norm", "clipped_fraction",
            "nonfinite_steps", "val_explained_variance"} <= set(history)
    best = min(range(2), key=lambda i: history["val_loss"][i])
    assert metrics["best"] == {"epoch": best, "val_loss": history["val_loss"][best]}
    for name in ("checkpoints/last.pt", "checkpoints/best.pt"):
        ckpt = torch.load(run_dir / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "loop", "rng", "config"} <= set(ckpt)
    weights = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    # a run leaves nothing in the current folder beyond artifacts/
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("torchelastic")) \
        == ["artifacts"]


def test_config_toml_reproduces_the_run(tmp_path):
    first = engine("run", "autoencoder", "--set", "train.epochs=1", "--set",
                   "data.num_models=256", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = run_dirs(tmp_path, "autoencoder")
    second = engine("run", "autoencoder", "--config", str(run_dir / "config.toml"), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    a, b = run_dirs(tmp_path, "autoencoder")
    assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
    ha = json.loads((a / "metrics.json").read_text())["history"]
    hb = json.loads((b / "metrics.json").read_text())["history"]
    assert ha == hb


def test_autoencoder_learns_the_zoo(tmp_path):
    """Validation MSE ends far below the data's variance (1.0: the zoo is standardised)."""
    done = engine("run", "autoencoder", "--set", "train.epochs=8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = run_dirs(tmp_path, "autoencoder")
    best = json.loads((run_dir / "metrics.json").read_text())["best"]["val_loss"]
    # seen: 0.027 after 8 epochs (0.022 after the default 20): 37x below the variance
    assert best < 0.1


def test_show_prints_only_toml_that_config_takes_back(tmp_path):
    done = engine("show", "autoencoder", "--set", "train.epochs=7", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    assert data["train"]["epochs"] == 7 and set(data) == {"train", "model", "data"}
    (tmp_path / "c.toml").write_text(done.stdout)
    again = engine("show", "autoencoder", "--config", str(tmp_path / "c.toml"), cwd=tmp_path)
    assert again.stdout == done.stdout
    assert list(tmp_path.iterdir()) == [tmp_path / "c.toml"]


def test_list_prints_name_then_description(tmp_path):
    done = engine("list", cwd=tmp_path)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert any(re.match(r"^autoencoder\s+Autoencoder that compresses", line) for line in lines)


def test_options_before_or_after_the_verb(tmp_path):
    before = subprocess.run([sys.executable, "-m", "engine", "--recipes",
                             str(ROOT / "recipes.toml"), "list"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert before.returncode == 0 and "autoencoder" in before.stdout


def test_user_error_exit_code_and_block(tmp_path):
    done = engine("run", "autoencoder", "--set", "train.epocs=3", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[:2] == ["error: unknown config key 'train.epocs'",
                                            "  where: --set train.epocs=3"]
    assert "hint: did you mean 'epochs'?" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()


def test_import_engine_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import engine, steps, engine.cli, "
                           "engine.io.writers, logging; "
                           "assert not logging.getLogger().handlers"],
                          cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_import_engine_leaves_torch_unloaded():
    """`python -m engine` sets OpenMP's wait policy before torch loads (PITFALLS: spinning
    threads on a busy 2-core machine made a 35 s run take 240 s); engine's names load lazily."""
    done = subprocess.run([sys.executable, "-c", "import sys, engine; "
                           "assert 'torch' not in sys.modules; engine.fit; "
                           "assert 'torch' in sys.modules"],
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_resume_asking_for_fewer_epochs_than_done_is_refused_and_writes_nothing(tmp_path):
    """`--resume RUN --set train.epochs=N` below the epochs the run did would mark an
    unfinished run finished and rewrite its config.toml: exit 2, naming train.epochs."""
    assert engine("run", "autoencoder", "--set", "train.epochs=2", cwd=tmp_path).returncode == 0
    (run_dir,) = run_dirs(tmp_path, "autoencoder")
    before = {name: (run_dir / name).read_bytes()
              for name in ("config.toml", "metrics.json", "checkpoints/last.pt")}
    done = engine("run", "autoencoder", "--resume", str(run_dir), "--set", "train.epochs=1",
                  cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "error: train.epochs is below what the run has already trained" in done.stderr
    assert "expected: train.epochs >= 2 (the run did 2 epochs)" in done.stderr
    assert "found: epochs = 1" in done.stderr
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert run_dirs(tmp_path, "autoencoder") == [run_dir]
