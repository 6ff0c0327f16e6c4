"""One validation pass: the mean loss and metrics over every validation sample (across ranks),
and the history row the loop records from it."""

from __future__ import annotations

import math
from typing import Any

import torch

import steps
from engine.core import distributed
from engine.core.recipe import StepContext
from engine.core.state import EpochTotals


def validate(run: Any, epoch: int, step: int, world: Any) -> dict[str, float]:
    """`{"val_loss": ..., "val_<metric>": ...}`: means over all validation samples, weighted by
    batch size, under inference_mode (no_grad with `Recipe.inference_mode=False`); one host
    sync per validation (and one collective under torchrun)."""
    # under DDP the plain module: DDP's forward may broadcast buffers (a collective), and the
    # ranks' validation shares may differ by a batch
    model, device = (run.model if world.active else run.train_model), run.device
    move = run.recipe.move_batch and device.type != "cpu"
    ctx = StepContext(device, False, epoch, step, run.rank, run.world_size)
    autocast = steps.autocast_or_none(device, run.cfg.train.precision)
    rows = _Sums()
    model.eval()
    for batch in run.loaders.val:
        if move:
            batch = steps.move_to_device(batch, device, device.type == "cuda")
        n = steps.batch_size_of(batch)
        loss, metrics = steps.eval_step(model, batch, run.recipe.forward_batch, ctx, autocast,
                                        run.recipe.inference_mode)
        rows.add(loss, metrics, n)
    model.train()
    keys, sums, counts = rows.result()
    sums = sums.tolist() if keys else []   # one host sync per validation
    figures = distributed.all_sum(sums + counts, world, device)
    return dict(zip(keys, [s / c for s, c in zip(figures, figures[len(keys):])]))


class _Sums:
    """Per figure, the sum of batch means weighted by batch size, and the samples counted.

    While every batch gives the same scalar metrics (the usual case) a batch costs one
    `torch.stack` and one multiply-add, whatever the number of metrics; a batch that gives
    other keys or non-scalar values moves the sums to one tensor per key (the same float32
    arithmetic either way, so the figures do not depend on the path).
    """

    __slots__ = ("keys", "row", "count", "totals", "counts")

    def __init__(self) -> None:
        self.keys: tuple | None = None   # the metrics' keys while every batch gives them
        self.row: torch.Tensor | None = None   # [val_loss, metric...] sums on the device
        self.count = 0
        self.totals: dict[str, torch.Tensor] = {}   # per key, once batches differ
        self.counts: dict[str, int] = {}

    def add(self, loss: torch.Tensor, metrics: dict, n: int) -> None:
        """Add one batch's loss and metrics (its means, weighted by its `n` samples)."""
        if self.keys is None and not self.totals:
            self.keys = tuple(metrics)   # the first batch's
        if self.keys is not None and tuple(metrics) == self.keys:
            try:   # scalars stack into a vector; other shapes refuse or give a matrix
                row = torch.stack((loss, *metrics.values()))
            except (RuntimeError, TypeError):   # TypeError: a metric that is no tensor
                row = None
            if row is not None and row.ndim == 1:
                row = row.float() * n
                self.row = row if self.row is None else self.row + row
                self.count += n
                return
        self._spread()
        for key, value in (("val_loss", loss), *((f"val_{k}", v) for k, v in metrics.items())):
            value = value.detach().float().mean() * n
            self.totals[key] = self.totals[key] + value if key in self.totals else value
            self.counts[key] = self.counts.get(key, 0) + n

    def _spread(self) -> None:
        """Move the stacked sums to the per-key form."""
        if self.keys is None:
            return
        if self.row is not None:
            for i, key in enumerate(["val_loss", *[f"val_{k}" for k in self.keys]]):
                self.totals[key] = self.row[i]
                self.counts[key] = self.count
        self.keys, self.row = None, None

    def result(self) -> tuple[list[str], torch.Tensor | None, list[float]]:
        """(sorted keys, their sums as one tensor, their counts)."""
        self._spread()
        keys = sorted(self.totals)
        sums = torch.stack([self.totals[k] for k in keys]) if keys else None
        return keys, sums, [float(self.counts[k]) for k in keys]


def history_row(epoch: int, totals: EpochTotals, val: dict[str, float]) -> dict[str, float]:
    """The history's row for the validation after `epoch`: the epoch's training figures and
    the validation's (the columns of `engine.core.state.COLUMNS`, then `val_<metric>`)."""
    val = dict(val)
    # nan: no batch or no optimizer step in the epoch (a resume at its very end)
    return {"epoch": epoch,
            "train_loss": totals.loss_sum / totals.losses if totals.losses else math.nan,
            "val_loss": val.pop("val_loss"), "learning_rate": totals.lr,
            "grad_norm": totals.norm_sum / totals.norms if totals.norms else math.nan,
            "clipped_fraction": (totals.clipped / totals.norms) if totals.norms else 0.0,
            "nonfinite_steps": totals.nonfinite, **val}
