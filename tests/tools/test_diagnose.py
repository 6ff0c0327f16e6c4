"""`engine diagnose`: each finding on hand-made histories, then on real runs made to fail."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

from engine.core.config import TrainConfig
from engine.core.errors import UserError
from engine.tools.diagnose import Finding, cli, diagnose, findings

ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"gradient_clip_value": 1.0, "early_stopping_patience": 5, "lr_patience": 2,
         "learning_rate": 1e-3}


def run(train_loss, val_loss, *, status="completed", lr=None, grad_norm=None, clipped=None,
        nonfinite=None, error=None) -> dict:
    """A metrics.json with one entry per validation (epochs 0, 1, ...)."""
    n = len(train_loss)
    history = {"epoch": list(range(n)), "train_loss": list(train_loss),
               "val_loss": list(val_loss), "learning_rate": lr or [1e-3] * n,
               "grad_norm": grad_norm or [0.5] * n, "clipped_fraction": clipped or [0.0] * n,
               "nonfinite_steps": nonfinite or [0] * n}
    data = {"recipe": "r", "run_id": "x", "status": status, "history": history,
            "best": {"epoch": None, "val_loss": None}}
    if error is not None:
        data["error"] = error
    return data


def codes(metrics, train=TRAIN) -> list[str]:
    return [f.code for f in findings(metrics, train)]


DECAY = [1.0, 0.6, 0.4, 0.3, 0.25, 0.22, 0.2, 0.19]


# --- each finding on hand-made histories -----------------------------------------------------

def test_healthy_when_losses_fall():
    """A run whose losses fall reads healthy, with the evidence citing values."""
    [f] = findings(run(DECAY, [x * 1.1 for x in DECAY]), TRAIN)
    assert (f.code, f.severity) == ("healthy", "info")
    assert "best 0.209 (epoch 8)" in f.evidence and "train_loss 1 -> 0.19" in f.evidence


def test_small_noise_is_still_healthy():
    """Validation noise of a few percent after convergence is neither overfitting nor flat."""
    val = [1.0, 0.5, 0.3, 0.21, 0.2, 0.205, 0.202, 0.207]
    assert codes(run(DECAY, val)) == ["healthy"]


def test_diverging_on_rising_training_loss():
    """Training loss rising from the start is divergence, cited with both ends."""
    [f] = findings(run([1.0, 1.5, 3.0, 9.0], [1.0, 1.6, 3.2, 9.5]), TRAIN)
    assert (f.code, f.severity) == ("diverging", "error")
    assert "1 (epoch 1)" in f.evidence and "9 (epoch 4)" in f.evidence


def test_diverging_when_loss_gives_back_its_progress():
    """Falling, then climbing back more than half of the way, is divergence."""
    assert "diverging" in codes(run([1.0, 0.3, 0.2, 0.7], [1.0, 0.3, 0.2, 0.7]))


def test_diverging_when_the_loss_blew_up_and_the_model_died():
    """Figures of a real autoencoder run with Adam at lr 10, clipping off: the loss blew up in
    epochs 1-3, then the model sat at a constant loss; that is divergence, not overfitting."""
    train = [3.606e17, 1.341e11, 3.701e12, 622.24, 622.62, 622.68]
    val = [497.71, 610.20, 621.13, 622.12, 622.16, 622.16]
    [f] = findings(run(train, val, status="early_stopped", lr=[10.0] * 4 + [5.0] * 2), TRAIN)
    assert (f.code, f.severity) == ("diverging", "error")
    assert "train_loss 1.341e+11 in epoch 2" in f.evidence
    assert "val_loss rose from 497.7 (epoch 1) to 622.2 (epoch 6)" in f.evidence


def test_early_spike_and_jumps_are_warnings():
    """Epoch 1's train loss 50x the val loss after it, or val loss doubling: a warning."""
    [f] = findings(run([3.7e11, 1.5e9, 1.3e9, 2.8e6], [4.2e9, 4.4e8, 3.6e8, 5.2e7]), TRAIN)
    assert (f.code, f.severity) == ("diverging", "warning") and "88.1x" in f.evidence
    [f] = findings(run([220, 44, 13.7, 6.8, 2.0, 1.4], [44.9, 19.6, 5.2, 3.2, 0.94, 1.98]),
                   TRAIN)
    assert (f.code, f.severity) == ("diverging", "warning")
    assert "jumped from 0.94 (epoch 5) to 1.98 (epoch 6)" in f.evidence
    # a few times above the val loss in epoch 1 is normal (dropout, a fast start)
    assert codes(run([0.462, 0.069, 0.033], [0.1395, 0.041, 0.029])) == ["healthy"]


def test_diverging_on_failed_run_with_nonfinite_error():
    """A run failed on a non-finite loss reads diverging, citing the error's message."""
    error = {"epoch": 2, "step": 57, "message": "non-finite training loss at epoch 3, step 58"}
    for history in (([1.0, 0.9], [1.0, 0.95]), ([], [])):
        [f] = findings(run(*history, status="failed", error=error),
                       {**TRAIN, "gradient_clip_value": 0.0})
        assert (f.code, f.severity) == ("diverging", "error")
        assert "epoch 3, step 58" in f.evidence
        assert "clipping on" in f.advice


def test_diverging_on_null_figures():
    """A null (non-finite) training loss or gradient norm in the history is divergence."""
    assert codes(run([1.0, None], [1.0, 2.0])) == ["diverging"]
    assert codes(run([1.0, 0.5], [1.0, 0.6], grad_norm=[0.4, None])) == ["diverging"]


def test_skipped_nonfinite_steps_are_a_warning():
    """Non-finite steps skipped (nan_policy skip) while the loss falls: a warning."""
    [f, *_] = findings(run(DECAY, DECAY, nonfinite=[0, 3, 0, 0, 1, 0, 0, 0]), TRAIN)
    assert (f.code, f.severity) == ("diverging", "warning")
    assert "4 non-finite step(s), first in epoch 2" in f.evidence


def test_failed_by_recipe_code_is_not_divergence():
    """A run failed by an exception in recipe code reads `failed`, not diverging."""
    error = {"epoch": 0, "step": 3, "message": "forward_batch raised KeyError: 'label'"}
    assert codes(run([], [], status="failed", error=error)) == ["failed"]


def test_not_learning_on_flat_loss():
    """Train and val loss within 1% of the start over the run: not-learning (rate too low)."""
    flat = [2.3026, 2.3025, 2.3024, 2.3023, 2.3022]
    [f] = findings(run(flat, flat), {**TRAIN, "learning_rate": 1e-7})
    assert (f.code, f.severity) == ("not-learning", "error")
    assert "1e-07" in f.advice and "2.303" in f.evidence


def test_not_learning_on_zero_gradients():
    """Gradient norms of zero mean no parameter is trained, whatever the loss does."""
    [f] = findings(run([1.0, 1.0], [1.0, 1.0], grad_norm=[0.0, 0.0]), TRAIN)
    assert f.code == "not-learning" and "frozen" in f.advice


def test_flat_needs_three_validations():
    """Two flat validations cannot tell a flat run from one that converged in epoch 1."""
    assert codes(run([1.0, 1.0], [1.0, 1.0])) == ["healthy"]


def test_overfitting_names_the_epoch_it_began():
    """Val loss rising from its minimum while training loss falls: overfitting from then."""
    train = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02]
    val = [1.0, 0.6, 0.5, 0.55, 0.62, 0.7, 0.8]
    [f] = findings(run(train, val), TRAIN)
    assert (f.code, f.severity) == ("overfitting", "warning")
    assert f.evidence.startswith("from epoch 3:")
    assert "0.8 by epoch 7" in f.evidence


def test_overfitting_needs_a_generalization_gap():
    """Val loss rising with the training loss no lower than it is not overfitting."""
    val = [0.9, 0.7, 0.72, 0.75, 0.74, 0.74]
    assert "overfitting" not in codes(run([1.0, 0.8, 0.75, 0.74, 0.73, 0.72], val))
    assert "overfitting" in codes(run([1.0, 0.8, 0.6, 0.5, 0.4, 0.3], val))


def test_one_spike_is_not_overfitting():
    """A single bad validation after the best is not a trend, nor is jitter near zero."""
    assert codes(run([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.5, 0.9])) == ["healthy"]
    val = [1.0, 0.1, 1e-4, 2e-4, 3e-4, 2e-4, 3e-4]
    assert codes(run([1.0, 0.1, 0.01, 0.005, 0.004, 0.003, 0.002], val)) == ["healthy"]


def test_clipping_always():
    """Most steps clipped (with clipping on) is a warning citing the share and the clip."""
    fs = findings(run(DECAY, DECAY, clipped=[1.0] * 6 + [0.5, 0.4], grad_norm=[3.0] * 8),
                  TRAIN)
    [f] = [f for f in fs if f.code == "clipping-always"]
    assert f.severity == "warning" and "86% of steps" in f.evidence and "1.0" in f.evidence
    assert "clipping-always" not in codes(run(DECAY, DECAY, clipped=[0.4] * 8))
    assert "clipping-always" not in codes(run(DECAY, DECAY, clipped=[1.0] * 8),
                                          {**TRAIN, "gradient_clip_value": 0.0})


def test_plateau_says_whether_the_rate_was_reduced():
    """Many validations without improvement: a warning if the rate never fell, else info."""
    train = [1.0, 0.5] + [0.45] * 8
    val = [1.0, 0.5] + [0.5] * 8
    [f] = findings(run(train, val, lr=[1e-3] * 10), {**TRAIN, "early_stopping_patience": 0})
    assert (f.code, f.severity) == ("plateau", "warning")
    assert "8 validations since epoch 2" in f.evidence and "never reduced" in f.evidence
    lr = [1e-3] * 5 + [5e-4] * 3 + [2.5e-4] * 2
    [f] = findings(run(train, val, lr=lr), {**TRAIN, "early_stopping_patience": 0})
    assert (f.code, f.severity) == ("plateau", "info")
    assert "already reduced (0.001 -> 0.00025)" in f.evidence


def test_plateau_waits_for_the_scheduler():
    """Fewer validations than twice (lr_patience + 1) without improvement is no plateau yet."""
    val = [1.0, 0.5] + [0.5] * 8
    assert "plateau" not in codes(run(DECAY + [0.18, 0.17], val), {**TRAIN, "lr_patience": 4})


def test_stopped_early_before_decay():
    """Early stopping with a rate that never fell is reported, with the patience mismatch."""
    val = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    fs = findings(run(DECAY[:7], val, status="early_stopped"),
                  {**TRAIN, "lr_patience": 5, "early_stopping_patience": 5})
    [f] = fs
    assert (f.code, f.severity) == ("stopped-early-before-decay", "warning")
    assert "epoch 7" in f.evidence and "lr_patience 5 >= early_stopping_patience 5" in f.evidence
    lr = [1e-3] * 5 + [5e-4] * 2
    assert codes(run(DECAY[:7], val, status="early_stopped", lr=lr)) == ["healthy"]


def test_most_serious_first():
    """Errors come before warnings, warnings before info."""
    fs = findings(run([1.0, 2.0, 4.0, 8.0], [1.0, 0.9, 1.2, 1.5], clipped=[1.0] * 4),
                  TRAIN)
    ranks = [("error", "warning", "info").index(f.severity) for f in fs]
    assert ranks == sorted(ranks) and fs[0].code == "diverging"
    assert "clipping-always" in [f.code for f in fs]


def test_short_and_partial_histories():
    """Histories of length 0 and 1, and older ones without the gradient columns, work."""
    assert codes(run([], [])) == ["no-history"]
    [f] = findings(run([0.5], [0.6]), {})
    assert f.code == "healthy" and "too short" in f.advice
    old = {"status": "completed", "history": {"epoch": [0, 1, 2], "train_loss": [1, .5, .4],
                                              "val_loss": [1, .6, .5]}}
    assert codes(old, {}) == ["healthy"]
    assert codes({"status": "running", "history": {}}, {}) == ["no-history"]


def test_severity_is_checked():
    """A Finding refuses an unknown severity."""
    with pytest.raises(ValueError):
        Finding("x", "fatal", "e", "a")


# --- files and the command -------------------------------------------------------------------

def write_run(folder: Path, metrics, config: str = "[train]\ngradient_clip_value = 0.0\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics) if not isinstance(metrics, str)
                                         else metrics)
    (folder / "config.toml").write_text(config)
    return folder


def test_diagnose_reads_config_toml(tmp_path):
    """Settings come from config.toml, missing ones from TrainConfig's defaults."""
    folder = write_run(tmp_path / "r", run(DECAY, DECAY, clipped=[1.0] * 8))
    assert [f.code for f in diagnose(folder)] == ["healthy"]  # clipping off in config.toml
    write_run(folder, run(DECAY, DECAY, clipped=[1.0] * 8), config="[train]\nepochs = 8\n")
    assert "clipping-always" in [f.code for f in diagnose(folder)]  # default clip 1.0


def test_json_output_shape(tmp_path, capsys):
    """--json prints only a JSON list of {code, severity, evidence, advice}."""
    folder = write_run(tmp_path / "r", run([1.0, 2.0, 4.0], [1.0, 2.0, 4.0]))
    assert cli(str(folder), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list) and data[0]["code"] == "diverging"
    assert all(set(item) == {"code", "severity", "evidence", "advice"} for item in data)
    assert all(isinstance(v, str) for item in data for v in item.values())


def test_human_output(tmp_path, capsys):
    """Human text has one block per finding with code, severity, evidence and advice."""
    folder = write_run(tmp_path / "r", run([1.0, 2.0, 4.0], [1.0, 2.0, 4.0]))
    assert cli(str(folder), as_json=False) == 0
    out = capsys.readouterr().out
    assert "diverging (error)\n  evidence: train_loss rose" in out and "  advice: " in out


@pytest.mark.parametrize("make, found", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "a file"),
    (lambda p: p, "no metrics.json"),
    (lambda p: write_run(p / "r", "{not json"), "unreadable JSON"),
    (lambda p: write_run(p / "r", "[1, 2]"), "a JSON list"),
    (lambda p: write_run(p / "r", {"status": "completed"}), 'no "history"'),
    (lambda p: write_run(p / "r", {"history": {"val_loss": ["a"]}}), "not a number"),
    (lambda p: write_run(p / "r", {"history": {"a": [1], "b": []}}), "different lengths"),
    (lambda p: write_run(p / "r", {**run(DECAY, DECAY), "best": "x"}), '"best" is "x"'),
    (lambda p: write_run(p / "r", {**run(DECAY, DECAY), "history": []}), '"history" is []'),
    (lambda p: write_run(p / "r", {**run(DECAY, DECAY), "status": 5}), '"status" is 5'),
    (lambda p: write_run(p / "r", {**run(DECAY, DECAY), "error": "boom"}), '"error" is "boom"'),
    (lambda p: write_run(p / "r", {**run(DECAY, DECAY), "best": {"epoch": 99}}),
     'best["epoch"] is 99'),
    (lambda p: write_run(p / "r", {"history": {"val_loss": [0.5, 0.4]}}), 'no "epoch" column'),
])
def test_not_a_run_is_a_user_error(tmp_path, make, found):
    """A path that is not a run raises a UserError naming the path and what was found."""
    path = make(tmp_path)
    with pytest.raises(UserError) as info:
        diagnose(path)
    assert found in info.value.found and str(path) in info.value.where


def test_train_that_is_not_a_table_is_a_user_error(tmp_path):
    """config.toml's `train = "x"` is named, not read as every default."""
    folder = write_run(tmp_path / "r", run(DECAY, DECAY), config='train = "x"\n')
    with pytest.raises(UserError) as info:
        diagnose(folder)
    assert info.value.where == str(folder / "config.toml") and "train = str" in info.value.found


def python_m_engine(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(cwd),
           "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    """Through `python -m engine diagnose`: 0 and JSON on a run, 2 and one message on a
    non-run."""
    folder = write_run(tmp_path / "r", run(DECAY, DECAY))
    proc = python_m_engine(["diagnose", str(folder), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["code"] == "healthy"
    proc = python_m_engine(["diagnose", str(tmp_path / "nope")], tmp_path)
    assert proc.returncode == 2
    assert "not a run directory" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_damaged_metrics_is_exit_2_naming_file_and_field(tmp_path):
    """A metrics.json of the wrong shape is not called healthy: exit 2, the file and the
    field named, as for a torn one."""
    for name, change, field in [("best", {"best": "x"}, '"best" is "x", not an object'),
                                ("status", {"status": 5}, '"status" is 5')]:
        folder = write_run(tmp_path / name, {**run(DECAY, DECAY), **change})
        proc = python_m_engine(["diagnose", str(folder)], tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout == "" and proc.stderr.count("error:") == 1
        assert "error: metrics.json is damaged" in proc.stderr
        assert str(folder / "metrics.json") in proc.stderr and field in proc.stderr


# --- real runs through engine.fit ------------------------------------------------------------

@attrs.frozen
class Data:
    n_train: int = 512
    n_val: int = 256
    hidden: int = 0           # 0: linear regression; else an MLP of this width
    noise: float = 0.1
    optimizer: str = "adam"


@attrs.frozen
class Config:
    train: TrainConfig = attrs.Factory(TrainConfig)
    data: Data = attrs.Factory(Data)


def build_model(cfg):
    d = cfg.data
    if d.hidden == 0:
        return torch.nn.Linear(8, 1)
    return torch.nn.Sequential(torch.nn.Linear(8, d.hidden), torch.nn.ReLU(),
                               torch.nn.Linear(d.hidden, d.hidden), torch.nn.ReLU(),
                               torch.nn.Linear(d.hidden, 1))


def build_loaders(cfg):
    from engine import Loaders
    g = torch.Generator().manual_seed(7)
    w = torch.randn(8, generator=g)
    w = w / w.norm()  # standardized targets (std 1 before noise), as a normal setup has

    def data(n):
        x = torch.randn(n, 8, generator=g)
        return torch.utils.data.TensorDataset(x, x @ w + cfg.data.noise *
                                              torch.randn(n, generator=g))

    return Loaders(torch.utils.data.DataLoader(data(cfg.data.n_train), shuffle=True,
                                               batch_size=cfg.train.batch_size, generator=g),
                   torch.utils.data.DataLoader(data(cfg.data.n_val), batch_size=256))


def forward_batch(model, batch, ctx):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)


def build_optimizer(cfg, model):
    if cfg.data.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)


def real_run(tmp_path, monkeypatch, name, *, data=None, **train):
    """A real run through engine.fit, written to a run directory; returns (result, folder)."""
    from engine import Recipe, fit
    monkeypatch.chdir(tmp_path)
    recipe = Recipe("toy", Config, build_model, build_loaders, forward_batch,
                    build_optimizer=build_optimizer)
    train = {"epochs": 10, "batch_size": 32, "device": "cpu", **train}
    cfg = Config(train=TrainConfig(**train), data=data or Data())
    folder = tmp_path / name
    return fit(recipe, cfg, run_dir=folder), folder


def test_real_run_too_high_rate_is_diverging(tmp_path, monkeypatch):
    """SGD at a rate far above 2/L, clipping off: the run fails and reads diverging."""
    result, folder = real_run(tmp_path, monkeypatch, "high", learning_rate=5.0,
                              gradient_clip_value=0.0, data=Data(optimizer="sgd"))
    assert result.status == "failed"
    found = diagnose(folder)
    assert found[0].code == "diverging" and found[0].severity == "error"
    assert "non-finite" in found[0].evidence


def test_real_run_too_low_rate_is_not_learning(tmp_path, monkeypatch):
    """Adam at 1e-7: the loss stays flat and the run reads not-learning."""
    _, folder = real_run(tmp_path, monkeypatch, "low", learning_rate=1e-7, epochs=5)
    found = diagnose(folder)
    assert found[0].code == "not-learning" and "1e-07" in found[0].advice
    # the gradients never shrink, so the default clip (1.0) cuts every step: also reported
    assert {f.code for f in found} <= {"not-learning", "clipping-always"}


def test_real_run_tiny_data_big_model_is_overfitting(tmp_path, monkeypatch):
    """32 noisy samples, a 256-wide MLP: overfitting, from the run's best epoch."""
    result, folder = real_run(tmp_path, monkeypatch, "overfit", learning_rate=3e-3,
                              epochs=60, batch_size=16, early_stopping_patience=10,
                              data=Data(n_train=32, hidden=256, noise=1.0))
    found = {f.code: f for f in diagnose(folder)}
    assert "overfitting" in found, found
    began = int(re.match(r"from epoch (\d+):", found["overfitting"].evidence).group(1))
    assert began == result.best_epoch + 1  # evidence counts epochs from 1


def test_real_normal_run_is_healthy(tmp_path, monkeypatch):
    """A well-set run (defaults, Adam at 1e-2) reads healthy."""
    _, folder = real_run(tmp_path, monkeypatch, "normal", learning_rate=1e-2)
    assert [f.code for f in diagnose(folder)] == ["healthy"]
