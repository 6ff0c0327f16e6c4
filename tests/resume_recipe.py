"""A tiny recipe for the resume, signal, checkpoint and nan_policy tests.

Dropout and a shuffled training loader make the RNG and the data order matter, so an inexact
resume shows up as different weights. `fault.nan_batches` makes the loss NaN on chosen training
batches (counted from 0 across the whole run, in the order the model sees them), and
`fault.sleep_ms` slows each training step so that a test can kill a run mid-step.

Registered in a temporary recipes.toml by the subprocess tests:

    [tiny]
    recipe = "resume_recipe:recipe"
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Event, Loaders, Recipe, StepOutput, TrainConfig, listens_to
from engine.io.layering import build_config, parse_set


@attrs.frozen
class ModelConfig:
    width: int = 16
    depth: int = 1
    dropout: float = 0.3


@attrs.frozen
class DataConfig:
    samples: int = 40
    features: int = 6
    val_samples: int = 12


@attrs.frozen
class FaultConfig:
    nan_batches: list[int] = attrs.Factory(list)
    sleep_ms: int = 0
    signal_at_step: int = -1      # `signalling` sends itself `signal` when this step ends
    signal: str = "SIGTERM"
    raise_at_step: int = -1       # forward_batch raises RuntimeError at this training step


@attrs.frozen
class TinyConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    model: ModelConfig = attrs.Factory(ModelConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    fault: FaultConfig = attrs.Factory(FaultConfig)


class Net(nn.Module):
    """An MLP with dropout; it also carries the fault plan (plain attributes, not state)."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        d, w = cfg.data.features, cfg.model.width
        layers: list[nn.Module] = [nn.Linear(d, w), nn.Tanh(), nn.Dropout(cfg.model.dropout)]
        for _ in range(cfg.model.depth - 1):
            layers += [nn.Linear(w, w), nn.Tanh(), nn.Dropout(cfg.model.dropout)]
        layers.append(nn.Linear(w, 1))
        self.body = nn.Sequential(*layers)
        self.nan_batches = frozenset(cfg.fault.nan_batches)
        self.sleep = cfg.fault.sleep_ms / 1000.0
        self.raise_at = cfg.fault.raise_at_step
        self.calls = 0   # training batches seen (the preflight forward runs in eval mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


def build_model(cfg: TinyConfig) -> nn.Module:
    return Net(cfg)


def build_loaders(cfg: TinyConfig) -> Loaders:
    g = torch.Generator().manual_seed(1234)
    n, d = cfg.data.samples + cfg.data.val_samples, cfg.data.features
    x = torch.randn(n, d, generator=g)
    y = torch.sin(x @ torch.randn(d, generator=g)) + 0.1 * torch.randn(n, generator=g)
    k = cfg.data.samples
    return Loaders(
        train=DataLoader(TensorDataset(x[:k], y[:k]), batch_size=cfg.train.batch_size,
                         shuffle=True),
        val=DataLoader(TensorDataset(x[k:], y[k:]), batch_size=cfg.train.batch_size))


def forward_batch(model: Net, batch, ctx) -> StepOutput:
    x, y = batch
    pred = model(x)
    loss = nn.functional.mse_loss(pred, y)
    if model.training:
        if ctx.step == model.raise_at:
            raise RuntimeError(f"fault injected at step {ctx.step}")
        if model.sleep:
            time.sleep(model.sleep)
        if model.calls in model.nan_batches:
            loss = loss * float("nan")
        model.calls += 1
    return StepOutput(loss, {"mae": (pred - y).abs().mean().detach()})


recipe = Recipe(name="tiny", config=TinyConfig, build_model=build_model,
                build_loaders=build_loaders, forward_batch=forward_batch)


@listens_to(Event.STEP_END)
def send_signal(event, state) -> None:
    """The process signals itself when step `fault.signal_at_step` ends: a stop at a known
    step, whatever the machine's speed."""
    fault = state.run.cfg.fault
    if state.step == fault.signal_at_step:
        import signal
        os.kill(os.getpid(), getattr(signal, fault.signal))


signalling = attrs.evolve(recipe, callbacks=(send_signal,))


def make_cfg(*sets: str) -> TinyConfig:
    """A config from `--set`-style strings over quiet, CPU, small defaults."""
    base = ("train.device=cpu", "train.batch_size=8", "train.epochs=3",
            "train.early_stopping_patience=0", "train.learning_rate=0.01")
    return build_config(TinyConfig, [parse_set(s) for s in (*base, *sets)])


# --- helpers for the tests that go through the command line -----------------------------------

ROOT = Path(__file__).resolve().parents[1]


def write_registry(folder: Path, recipe_path: str = "resume_recipe:recipe",
                   **tables: dict) -> Path:
    """A recipes.toml in `folder` with `tiny` (and `other`, the same recipe under another key)
    over small CPU defaults; `tables` (train=..., model=..., fault=...) override them;
    `recipe_path` is the Recipe's import path (`resume_recipe:signalling`)."""
    import tomli_w

    train = {"device": "cpu", "batch_size": 8, "epochs": 3, "early_stopping_patience": 0,
             "learning_rate": 0.01, **tables.pop("train", {})}
    entry = {"recipe": recipe_path, "train": train, **tables}
    path = folder / "recipes.toml"
    path.write_text(tomli_w.dumps({"tiny": entry, "other": dict(entry)}), encoding="utf-8")
    return path


def subprocess_env(tmp: Path) -> dict:
    """Environment for `python -m engine` children: the project and this folder importable,
    temporary files under `tmp`, one quiet OpenMP thread (no spinning on a busy machine)."""
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), TMPDIR=str(tmp),
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", ENGINE_DEBUG="")
    env.pop("ENGINE_RECIPES", None)
    return env


def run_dirs(output_dir: Path, name: str = "tiny") -> list[Path]:
    """The run directories under `output_dir`, oldest first."""
    return sorted((Path(output_dir) / "models" / name / "runs").glob("*"))


def check_files_parse(run_dir: Path) -> list[str]:
    """Read every file the engine writes atomically; return the names read. A torn file fails
    here (json, TOML and torch.load with weights_only=True all refuse a truncated file)."""
    import json

    import tomllib

    read = []
    for path in sorted(run_dir.rglob("*")):
        if path.name.endswith(".tmp") or not path.is_file():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".toml":
            tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        else:
            continue
        read.append(str(path.relative_to(run_dir)))
    return read
