"""Validation's sums: the stacked path (one stack per batch while every batch gives the same
scalar metrics) and the per-key path (other keys, other shapes) give the same figures as a
plain per-key mean weighted by batch size, whatever the batches."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.validation import _Sums

values = st.floats(-1e3, 1e3, allow_nan=False, width=32)
batch = st.fixed_dictionaries({
    "n": st.integers(1, 64),
    "loss": values,
    "metrics": st.dictionaries(st.sampled_from(["mae", "acc", "ndcg"]),
                               st.one_of(values, st.lists(values, min_size=1, max_size=3)),
                               max_size=3)})


def _tensor(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def _plain(batches: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for b in batches:
        items = [("val_loss", b["loss"]), *((f"val_{k}", v) for k, v in b["metrics"].items())]
        for key, value in items:
            mean = float(_tensor(value).mean()) * b["n"]
            totals[key] = totals.get(key, 0.0) + mean
            counts[key] = counts.get(key, 0) + b["n"]
    return {k: totals[k] / counts[k] for k in totals}


@settings(max_examples=200, deadline=None)
@given(st.lists(batch, min_size=1, max_size=6), st.booleans())
def test_sums_equal_a_plain_weighted_mean(batches, same_keys):
    if same_keys:   # the usual case: every batch gives the first batch's metrics
        batches = [{**b, "metrics": {k: v for k, v in batches[0]["metrics"].items()}}
                   for b in batches]
    sums = _Sums()
    for b in batches:
        sums.add(_tensor(b["loss"]), {k: _tensor(v) for k, v in b["metrics"].items()}, b["n"])
    keys, row, counts = sums.result()
    got = {k: row[i].item() / counts[i] for i, k in enumerate(keys)}
    expected = _plain(batches)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-3 * max(1.0, abs(value)), (key, got, expected)


def test_scalar_batches_take_the_stacked_path():
    """Same scalar metrics in every batch: one row tensor, no per-key sums."""
    sums = _Sums()
    for n in (4, 4, 2):
        sums.add(torch.tensor(1.0), {"mae": torch.tensor(2.0), "acc": torch.tensor(3)}, n)
    assert sums.totals == {} and sums.row is not None and sums.count == 10
    keys, row, counts = sums.result()
    assert keys == ["val_acc", "val_loss", "val_mae"]
    assert row.tolist() == [30.0, 10.0, 20.0] and counts == [10.0, 10.0, 10.0]


def test_the_window_rebuilds_every_epoch_total():
    """FigureWindow.read makes EpochTotals whole (not by evolve): a new field must be set there
    too, or a read would reset it."""
    import inspect

    import attrs

    from engine.core import window
    from engine.core.state import EpochTotals
    source = inspect.getsource(window.FigureWindow.read)
    assert all(f"{name}=" in source for name in attrs.fields_dict(EpochTotals))


def test_validation_loads_its_data_outside_inference_mode_and_caches_no_inference_tensor():
    """The guard is entered per batch, around forward_batch only: a validation dataset that
    builds and caches tensors on first access (a feature cache shared with training) caches
    ordinary tensors, which the next epoch's training can use in autograd."""
    import attrs
    from torch.utils.data import DataLoader, Dataset

    from engine import Loaders, Recipe, TrainConfig, fit

    cache: dict[int, torch.Tensor] = {}
    seen: list[bool] = []

    class Cached(Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> torch.Tensor:
            seen.append(torch.is_inference_mode_enabled())
            if i not in cache:
                cache[i] = torch.full((3,), float(i)) * 0.1
            return cache[i]

    @attrs.frozen
    class Cfg:
        train: TrainConfig = TrainConfig(epochs=2, batch_size=4, device="cpu")

    def forward(model, x, ctx):
        assert torch.is_inference_mode_enabled() == (not ctx.training)
        return torch.nn.functional.mse_loss(model(x), x)

    data = Cached()
    recipe = Recipe(name="cached", config=Cfg, build_model=lambda c: torch.nn.Linear(3, 3),
                    build_loaders=lambda c: Loaders(DataLoader(data, 4), DataLoader(data, 4)),
                    forward_batch=forward)
    result = fit(recipe, Cfg())
    assert result.status == "completed" and len(result.history["val_loss"]) == 2
    assert seen and not any(seen)   # no item was loaded in inference mode
    assert not any(t.is_inference() for t in cache.values())
