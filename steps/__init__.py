"""Composable step functions: they need only torch, never the engine."""

from steps.batches import batch_size_of, iter_tensors, move_to_device
from steps.precision import autocast, autocast_or_none, make_scaler
from steps.train import (
    backward,
    eval_step,
    forward_loss,
    grad_norm,
    optimizer_step,
    split_output,
    train_step,
)

__all__ = [
    "autocast", "autocast_or_none", "backward", "batch_size_of", "eval_step", "grad_norm",
    "iter_tensors", "forward_loss", "make_scaler", "move_to_device", "optimizer_step",
    "split_output", "train_step",
]
