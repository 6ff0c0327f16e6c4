"""A stop signal before the first step (while the recipe builds its data) ends `run` with exit
code 130 and one line, and leaves no half-made run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

RECIPE = '''
import time
from pathlib import Path
import attrs, torch
from torch.utils.data import DataLoader, TensorDataset
from engine import Loaders, Recipe, TrainConfig

@attrs.frozen
class Config:
    train: TrainConfig = attrs.Factory(TrainConfig)

def build_loaders(cfg):
    Path("building").write_text("now")   # the test sends its signal from here on
    time.sleep(4)
    x = torch.randn(32, 4)
    return Loaders(train=DataLoader(TensorDataset(x, x), 8), val=DataLoader(TensorDataset(x, x), 8))

def forward(model, batch, ctx):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

recipe = Recipe(name="slow", config=Config, build_model=lambda cfg: torch.nn.Linear(4, 4),
                build_loaders=build_loaders, forward_batch=forward)
'''


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_building_exits_130_and_writes_nothing(tmp_path: Path, sig: int):
    """Handlers are installed when the verb starts: a SIGTERM or SIGINT during the build is a
    clean stop (130, one line), not a kill (143) or a traceback; no run folder is made."""
    (tmp_path / "slow_recipe.py").write_text(RECIPE)
    (tmp_path / "recipes.toml").write_text('[slow]\nrecipe = "slow_recipe:recipe"\n'
                                           'description = "slow to build"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "slow", "--set",
                             "train.epochs=1"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "building").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "stopped by a signal before the first step: nothing was written" in err
    assert "Traceback" not in err
    runs = tmp_path / "artifacts" / "models" / "slow" / "runs"
    assert not runs.exists() or not any(runs.iterdir())
