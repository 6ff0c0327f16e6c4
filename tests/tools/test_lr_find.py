"""The learning-rate range test: where it stops, what it suggests, and `engine lr-find`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.io.layering import parse_set
from engine.tools.lr_find import LRFindResult, cli, lr_range_test, suggest

ROOT = Path(__file__).resolve().parents[2]


def mse(model, batch, ctx):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)


def regression(scale: float, d: int = 8, n: int = 2048, seed: int = 0):
    """Linear regression with input covariance diag(scale * [0.01 .. 1]): for the MSE loss the
    Hessian is 2 X^T X / n, so the best constant SGD rate is 1/L with L its largest eigenvalue."""
    g = torch.Generator().manual_seed(seed)
    eig = scale * torch.logspace(-2, 0, d)
    x = torch.randn(n, d, generator=g) * eig.sqrt()
    w = torch.randn(d, generator=g) / eig.sqrt() * 0.3
    y = x @ w + 0.05 * scale ** 0.5 * torch.randn(n, generator=g)
    lipschitz = 2 * torch.linalg.eigvalsh(x.T @ x / n).max().item()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True, generator=g)
    return loader, lipschitz


@pytest.mark.parametrize("scale", [0.5, 1.0, 30.0, 1000.0])
def test_suggestion_within_10x_of_one_over_l(scale):
    """On least squares with known curvature L, SGD's suggested rate is within 10x of 1/L."""
    torch.manual_seed(0)
    loader, lipschitz = regression(scale)
    model = torch.nn.Linear(8, 1, bias=False)
    result = lr_range_test(model, loader, mse, torch.optim.SGD(model.parameters(), lr=0.1),
                           "cpu")
    best = 1 / lipschitz
    assert best / 10 <= result.suggested_lr <= best * 10, (result.suggested_lr, best)
    # it stopped on divergence, before the 200 steps, with the smoothed loss 4x its minimum
    assert len(result.lrs) < 200
    assert result.losses[-1] > 4 * min(result.losses[:-1])


def test_rates_rise_exponentially_and_loader_cycles():
    """Rates go from min_lr by a constant factor; a 2-batch loader serves all the steps."""
    x = torch.randn(16, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1)),
                                         batch_size=8)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    result = lr_range_test(model, loader, mse, opt, "cpu", min_lr=1e-6, max_lr=1e-4,
                           num_steps=30)
    assert len(result.lrs) == 30 == len(result.losses) == len(result.raw_losses)
    assert result.lrs[0] == pytest.approx(1e-6)
    assert result.lrs[-1] == pytest.approx(1e-4)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios))
    assert all(math.isfinite(v) for v in result.losses)


def test_param_groups_keep_their_ratio():
    """A group at a tenth of the first group's rate stays at a tenth during the test."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 1.0},
                           {"params": model[1].parameters(), "lr": 0.1}])
    x = torch.randn(8, 3)
    loader = [(x, x.sum(1))]
    result = lr_range_test(model, loader, mse, opt, "cpu", min_lr=1e-6, max_lr=1e-5,
                           num_steps=5)
    assert opt.param_groups[0]["lr"] == pytest.approx(result.lrs[-1])
    assert opt.param_groups[1]["lr"] == pytest.approx(result.lrs[-1] / 10)


def test_empty_loader_is_a_user_error():
    """An empty training loader is reported as a user mistake, not a hang or a traceback."""
    from engine.core.errors import UserError
    model = torch.nn.Linear(3, 1)
    with pytest.raises(UserError, match="no batches"):
        lr_range_test(model, [], mse, torch.optim.SGD(model.parameters(), lr=1.0), "cpu")


def test_nonfinite_loss_stops_the_test():
    """A loss that turns NaN ends the test; no NaN is recorded."""
    calls = []

    def nan_after_5(model, batch, ctx):
        calls.append(ctx.step)
        loss = mse(model, batch, ctx)
        return loss * float("nan") if ctx.step >= 5 else loss

    x = torch.randn(8, 3)
    model = torch.nn.Linear(3, 1)
    result = lr_range_test(model, [(x, x.sum(1))], nan_after_5,
                           torch.optim.SGD(model.parameters(), lr=1.0), "cpu")
    assert len(result.lrs) == 5 and max(calls) == 5
    assert all(math.isfinite(v) for v in result.losses)


def test_suggest_needs_three_points_and_skips_a_lucky_start():
    """Too short a test suggests nothing; an early noisy dip is not taken as the minimum."""
    assert suggest([1e-3, 1e-2], [1.0, 0.5]) is None
    lrs = [10 ** (-7 + i * 0.04) for i in range(100)]
    losses = [0.1] + [1.0 - 0.005 * i for i in range(1, 60)] + [2.0] * 40
    assert suggest(lrs, losses) == pytest.approx(lrs[59] / 10)
    assert LRFindResult((), (), None).suggested_lr is None


# --- the command -----------------------------------------------------------------------------

RECIPE = '''
import attrs
import torch
from engine.core.config import TrainConfig
from engine.core.recipe import Loaders, Recipe


@attrs.frozen
class Config:
    train: TrainConfig = attrs.Factory(TrainConfig)


def build_model(cfg):
    return torch.nn.Linear(4, 1, bias=False)


def build_loaders(cfg):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 4, generator=g) * 2.0   # covariance 4 I: L = 8, 1/L = 0.125
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    ds = torch.utils.data.TensorDataset(x, y)
    return Loaders(torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size,
                                               shuffle=True, generator=g),
                   torch.utils.data.DataLoader(ds, batch_size=64))


def forward_batch(model, batch, ctx):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)


def sgd(cfg, model):
    return torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate)


recipe = Recipe("linreg", Config, build_model, build_loaders, forward_batch,
                build_optimizer=sgd)
'''


def make_project(tmp_path: Path, module: str) -> Path:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(RECIPE))
    registry = tmp_path / "recipes.toml"
    registry.write_text(f'[linreg]\nrecipe = "{module}:recipe"\ndescription = "test"\n'
                        '[linreg.train]\nbatch_size = 32\ndevice = "cpu"\n')
    return registry


def test_cli_writes_a_new_folder_and_prints_the_flag(tmp_path, capsys):
    """lr-find writes lr_find.json/png in a new folder and prints a usable --set flag."""
    registry = make_project(tmp_path, "lrf_recipe_a")
    out = tmp_path / "out"
    assert cli("linreg", recipes=str(registry), output_dir=str(out)) == 0
    assert cli("linreg", recipes=str(registry), output_dir=str(out)) == 0
    folders = sorted((out / "lr_find" / "linreg").iterdir())
    assert len(folders) == 2  # every call gets its own folder
    data = json.loads((folders[0] / "lr_find.json").read_text())
    # seeded as `run` seeds: the same curve both times
    assert json.loads((folders[1] / "lr_find.json").read_text()) == data
    assert set(data) == {"lrs", "losses", "suggested_lr"}
    assert len(data["lrs"]) == len(data["losses"]) > 10
    assert 0.125 / 10 <= data["suggested_lr"] <= 0.125 * 10
    assert (folders[0] / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "models").exists()  # never a run directory
    stdout = capsys.readouterr().out
    flag = stdout.split("--set ")[-1].split()[0]
    layer = parse_set(flag)
    assert layer.data["train"]["learning_rate"] == pytest.approx(data["suggested_lr"], rel=0.05)
    assert str(folders[0]) in stdout or str(folders[1]) in stdout


BROKEN = [
    ("forward", "    x, y = batch\n    return", "    raise KeyError('label')\n    return",
     ["forward_batch fails on the first training batch: KeyError", "lrf_broken_forward.py",
      "'label'"]),
    ("builder", "    return torch.nn.Linear(4, 1, bias=False)",
     "    raise ValueError('no width')",
     ["build_model raised ValueError", "build_model", "no width"]),
    ("loader", "    ds = torch.utils.data.TensorDataset(x, y)",
     "    ds = torch.utils.data.TensorDataset(x, y[:3])",
     ["build_loaders raised AssertionError", "Size mismatch"]),
    ("collate", "shuffle=True, generator=g)",
     "shuffle=True, generator=g, collate_fn=lambda b: b[99])",
     ["the training loader fails on its first batch", "build_loaders"]),
]


@pytest.mark.parametrize("case, old, new, fragments", BROKEN, ids=[c[0] for c in BROKEN])
def test_cli_names_recipe_errors(tmp_path, capsys, case, old, new, fragments):
    """A mistake in a recipe builder or in forward_batch is exit 2 with one error block that
    names the recipe function (built as `run` builds it), no traceback, and no output folder."""
    from engine.cli import main
    registry = make_project(tmp_path, f"lrf_broken_{case}")
    module = tmp_path / f"lrf_broken_{case}.py"
    assert old in module.read_text()
    module.write_text(module.read_text().replace(old, new))
    code = main(["lr-find", "linreg", "--recipes", str(registry), "--output-dir",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_python_m_engine_lr_find(tmp_path):
    """`python -m engine lr-find NAME` exits 0 and prints the flag."""
    registry = make_project(tmp_path, "lrf_recipe_c")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path),
           "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "engine", "lr-find", "linreg", "--recipes",
                           str(registry), "--output-dir", str(tmp_path / "o")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--set train.learning_rate=" in proc.stdout
    assert list((tmp_path / "o" / "lr_find" / "linreg").glob("*/lr_find.json"))


@pytest.mark.parametrize("where", ["file", "under-file", "read-only"])
def test_an_unusable_output_dir_is_refused_before_the_sweep(tmp_path, capsys, monkeypatch,
                                                            where):
    """--output-dir that is a file, lies under one or cannot be written: exit 2 naming it,
    before any object is built or any step trained; the file is left as it was."""
    import engine.core.building as building
    from engine.cli import main
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    registry = make_project(tmp_path, f"lrf_output_{where.replace('-', '_')}")
    built = []
    monkeypatch.setattr(building, "build_objects", lambda *a, **k: built.append(a))
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    if where == "read-only":
        blocker = tmp_path / "locked"
        blocker.mkdir(mode=0o555)
    target = blocker / "sub" if where == "under-file" else blocker
    code = main(["lr-find", "linreg", "--recipes", str(registry), "--output-dir", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1, err
    assert "the output directory cannot be written" in err
    assert f"where: --output-dir {target}" in err and str(blocker) in err
    assert built == []
    if where != "read-only":
        assert blocker.read_text() == "keep me"
