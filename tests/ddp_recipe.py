"""A tiny regression recipe for the distributed, accumulation and precision tests.

The data order is fixed (no shuffling), so a DistributedSampler over two ranks hands rank r the
samples r, r+2, r+4, ...: step k of two ranks with batch b sees the same samples as step k of
one process with batch 2b. The `probe` table makes one rank fail at a given step and makes every
rank save its final weights (a recipe-level callback: no engine change is needed for either).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engine import Event, Loaders, Recipe, TrainConfig
from engine.core.events import listens_to


@attrs.frozen
class Probe:
    n_train: int = 64
    n_val: int = 32
    width: int = 16
    fail_rank: int = -1          # this rank raises in forward_batch ...
    fail_step: int = -1          # ... at this optimizer step
    dump_dir: str = ""           # every rank saves its final state_dict here (rank{r}.pt)
    sleep_per_step: float = 0.0  # slows training down, for the stop-signal test
    nan_rank: int = -1           # this rank's loss is NaN ...
    nan_step: int = -1           # ... at this optimizer step
    signal_step: int = -1        # `deciding`: rank 0 sends itself SIGTERM when this step ends


@attrs.frozen
class ProbeConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    probe: Probe = attrs.Factory(Probe)


def build_model(cfg: ProbeConfig) -> nn.Module:
    w = cfg.probe.width
    return nn.Sequential(nn.Linear(4, w), nn.Tanh(), nn.Linear(w, 2))


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 4, generator=g)
    y = torch.stack([torch.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 3]], dim=1)
    return x, y


def build_loaders(cfg: ProbeConfig) -> Loaders:
    p = cfg.probe
    x, y = make_data(p.n_train + p.n_val)
    train = TensorDataset(x[:p.n_train], y[:p.n_train])
    val = TensorDataset(x[p.n_train:], y[p.n_train:])
    b = cfg.train.batch_size
    return Loaders(train=DataLoader(train, batch_size=b, shuffle=False),
                   val=DataLoader(val, batch_size=b))


def forward_batch(model: nn.Module, batch, ctx) -> torch.Tensor:
    x, y = batch
    p = _PROBE.get("cfg")
    if p is not None and ctx.training and ctx.rank == p.fail_rank and ctx.step == p.fail_step:
        raise RuntimeError(f"probe failure on rank {ctx.rank} at step {ctx.step}")
    if p is not None and p.sleep_per_step and ctx.training:
        import time
        time.sleep(p.sleep_per_step)
    loss = nn.functional.mse_loss(model(x), y)
    if (p is not None and ctx.training and ctx.rank == p.nan_rank and ctx.step == p.nan_step
            and not _PROBE.get("nan_done")):
        _PROBE["nan_done"] = True   # once: a skipped batch does not advance the step
        loss = loss * float("nan")
    return loss


# forward_batch sees only (model, batch, ctx): the probe settings reach it through this holder,
# filled by build_model's caller below (one run per process in the torchrun tests)
_PROBE: dict = {}


def _build_model(cfg: ProbeConfig) -> nn.Module:
    _PROBE.update(cfg=cfg.probe, nan_done=False)
    return build_model(cfg)


@listens_to(Event.FIT_END)
def dump_weights(event, state) -> None:
    """Each rank writes the weights it ends with, so a test can compare ranks."""
    folder = state.run.cfg.probe.dump_dir
    if folder:
        path = Path(folder) / f"rank{state.run.rank}.pt"
        torch.save(state.run.model.state_dict(), path)


recipe = Recipe(name="ddp_probe", config=ProbeConfig, build_model=_build_model,
                build_loaders=build_loaders, forward_batch=forward_batch,
                build_scheduler=None, callbacks=(dump_weights,))


@listens_to(Event.FIT_END)
def dump_decisions(event, state) -> None:
    """Each rank writes what it decided (history, learning rate, where and why it stopped)."""
    folder = state.run.cfg.probe.dump_dir
    if folder:
        import json
        decided = {"history": {k: list(v) for k, v in state.history.items()},
                   "lr": state.run.optimizer.param_groups[0]["lr"], "epoch": state.epoch,
                   "status": state.status, "best_epoch": state.best_epoch,
                   "bad_validations": state.bad_validations}
        path = Path(folder) / f"rank{state.run.rank}.json"
        path.write_text(json.dumps(decided, default=str))


@listens_to(Event.STEP_END)
def signal_self(event, state) -> None:
    if state.run.rank == 0 and state.step == state.run.cfg.probe.signal_step:
        import os
        import signal
        os.kill(os.getpid(), signal.SIGTERM)


def _uneven_loaders(cfg: ProbeConfig) -> Loaders:
    """The probe's data with the odd samples (rank 1's shard) made noisier, so that the ranks'
    own validation losses differ and only reduced figures give them the same decisions."""
    loaders = build_loaders(cfg)
    for dataset in (loaders.train.dataset, loaders.val.dataset):
        dataset.tensors[1][1::2] *= 3.0
    return loaders


# the probe with the default scheduler (ReduceLROnPlateau on the validation loss), early
# stopping from the config, uneven data per rank, and the decisions of every rank dumped
deciding = attrs.evolve(recipe, build_loaders=_uneven_loaders,
                        build_scheduler=attrs.fields(Recipe).build_scheduler.default,
                        callbacks=(dump_weights, dump_decisions, signal_self))
