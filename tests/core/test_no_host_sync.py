"""The loop reads its figures from the device only at log intervals, never per step.

Every tensor method that copies a value to the host (`item`, `tolist`, `cpu`, `numpy`, and
`float()`, `int()`, `bool()` of a tensor, e.g. `if torch.isfinite(loss):`) is wrapped with a
counter during a fit. With `log_every_n_steps = K`, a fit of 4N steps must make about 3N/K more
such calls than a fit of N steps (a few per read), not 3N (one or more per step).

The test recipe trains with SGD: torch's Adam reads its CPU step counter with `.item()` on every
step (a host value, not a device sync), which would hide the engine's own count. That the
counter is live is shown through fit itself (`nan_policy = "skip"` must add one read a step).

On CUDA, `test_ranking_v2_steps_make_no_sync_on_cuda` runs a real recipe with its writers under
`torch.cuda.set_sync_debug_mode("error")`: any synchronizing call inside the epoch's steps
raises.
"""

from __future__ import annotations

import collections
from unittest import mock

import attrs
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine import Loaders, Recipe, TrainConfig, fit

SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
BATCH = 8


@attrs.frozen
class SyncConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    batches: int = 40


def _loaders(cfg: SyncConfig) -> Loaders:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batches * BATCH, 4, generator=g)
    y = x.sum(1, keepdim=True)
    val = TensorDataset(x[:16], y[:16])
    return Loaders(train=DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True),
                   val=DataLoader(val, batch_size=BATCH))


def _forward(model, batch, ctx):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _sgd(cfg: SyncConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01)


RECIPE = Recipe(name="sync", config=SyncConfig, build_model=lambda cfg: torch.nn.Linear(4, 1),
                build_loaders=_loaders, forward_batch=_forward, build_optimizer=_sgd)


def syncs_during_fit(steps: int, log_every: int, **train) -> collections.Counter:
    """Host reads by name during a one-epoch fit of `steps` optimizer steps."""
    counts: collections.Counter = collections.Counter()

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)
        return wrapper

    cfg = SyncConfig(train=TrainConfig(epochs=1, batch_size=BATCH, log_every_n_steps=log_every,
                                       device="cpu", **train), batches=steps)
    patches = [mock.patch.object(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
               for name in SYNCS]
    for p in patches:
        p.start()
    try:
        result = fit(RECIPE, cfg)
    finally:
        for p in reversed(patches):
            p.stop()
    assert result.status == "completed"
    assert result.state.step == steps
    return counts


@pytest.mark.parametrize("log_every", [5, 20])
def test_host_reads_grow_with_log_intervals_not_steps(log_every):
    n = 40
    few = syncs_during_fit(n, log_every)
    many = syncs_during_fit(4 * n, log_every)
    extra = sum(many.values()) - sum(few.values())
    reads = 3 * n // log_every          # the extra log intervals of the longer fit
    # a few host reads per interval (the losses and the norms): far below one per step (3n)
    assert extra <= 3 * reads + 2, (few, many)
    assert extra < 3 * n / 2, (few, many)


def test_without_logging_the_longer_fit_reads_no_more():
    # logging interval longer than both fits: one read at the epoch's end, whatever its length
    few = syncs_during_fit(40, 1000)
    many = syncs_during_fit(160, 1000)
    assert sum(many.values()) - sum(few.values()) <= 2, (few, many)


def test_default_nan_policy_does_not_check_each_step():
    # nan_policy "stop" finds a non-finite loss at the next read; "skip" opts into a per-step
    # check (a sync each step), which this count must see, or the test above proves nothing
    stop = syncs_during_fit(80, 1000, nan_policy="stop")
    skip = syncs_during_fit(80, 1000, nan_policy="skip")
    assert sum(skip.values()) - sum(stop.values()) >= 80, (stop, skip)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ranking_v2_steps_make_no_sync_on_cuda(tmp_path):
    """ranking_v2 (reduced) with a run directory, so its writers and recipe callbacks observe:
    from each epoch's start to its last step, CUDA's sync debug mode is "error", so a `.item()`,
    a `bool(tensor)` or a blocking copy anywhere in the loop, the step or an observer raises.
    The epoch-end read (one sync by design) and validation run in the default mode."""
    from engine import Event, listens_to
    from engine.io.layering import Layer, build_config, parse_set
    from recipes.ranking_v2 import recipe as ranking

    @listens_to(Event.EPOCH_START, Event.STEP_END)
    def strict(event, state):
        last = state.batch >= len(state.run.loaders.train)
        torch.cuda.set_sync_debug_mode(0 if event is Event.STEP_END and last else "error")

    sets = ["train.epochs=2", "train.batch_size=32", 'train.device="cuda"',
            "train.log_every_n_steps=1000", "model.hidden_dim=32", "model.ff_dim=64",
            "data.synthetic_datasets=200", "data.synthetic_models=20"]
    cfg = build_config(ranking.config, [Layer({"train": {"output_dir": str(tmp_path)}}, "t"),
                                        *(parse_set(s) for s in sets)])
    try:
        result = fit(ranking, cfg, run_dir=tmp_path / "run", callbacks=(strict,))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.status == "completed" and result.state.step > 4
