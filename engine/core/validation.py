"""One validation pass: the mean loss and metrics over every validation sample (across ranks),
and the history row the loop records from it."""

from __future__ import annotations

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
    autocast = steps.autocast(device, run.cfg.train.precision)
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    model.eval()
    for batch in run.loaders.val:
        if move:
            batch = steps.move_to_device(batch, device, device.type == "cuda")
        n = steps.batch_size_of(batch)
        loss, metrics = steps.eval_step(model, batch, run.recipe.forward_batch, ctx, autocast,
                                        run.recipe.inference_mode)
        for key, value in (("val_loss", loss), *((f"val_{k}", v) for k, v in metrics.items())):
            value = value.detach().float().mean() * n
            totals[key] = totals[key] + value if key in totals else value
            counts[key] = counts.get(key, 0) + n
    model.train()
    keys = sorted(totals)
    sums = torch.stack([totals[k] for k in keys]).tolist()  # one host sync per validation
    figures = distributed.all_sum(sums + [float(counts[k]) for k in keys], world, device)
    return {k: figures[i] / figures[len(keys) + i] for i, k in enumerate(keys)}


def history_row(epoch: int, totals: EpochTotals, val: dict[str, float]) -> dict[str, float]:
    """The history's row for the validation after `epoch`: the epoch's training figures and
    the validation's (the columns of `engine.core.state.COLUMNS`, then `val_<metric>`)."""
    val = dict(val)
    return {"epoch": epoch, "train_loss": _mean(totals.loss_sum, totals.losses),
            "val_loss": val.pop("val_loss"), "learning_rate": totals.lr,
            "grad_norm": _mean(totals.norm_sum, totals.norms),
            "clipped_fraction": (totals.clipped / totals.norms) if totals.norms else 0.0,
            "nonfinite_steps": totals.nonfinite, **val}


def _mean(total: float, n: int) -> float:
    return total / n if n else float("nan")
