"""Checks before the first step: the cheap one every run makes (one forward on the first
batch), so that a mistake costs seconds, not an epoch."""

from __future__ import annotations

from typing import Any

import torch

import steps
from engine import checkpoint as ckpt
from engine.errors import UserError, describe_value
from engine.recipe import StepContext


def _where(recipe: Any) -> str:
    fn = recipe.forward_batch
    return f"recipe '{recipe.name}' forward_batch ({fn.__module__}.{fn.__qualname__})"


def check_step_output(out: Any, recipe: Any) -> torch.Tensor:
    """forward_batch must return a scalar loss tensor that requires grad, or a StepOutput."""
    where = _where(recipe)
    expected = "a scalar loss tensor that requires grad, or StepOutput(loss, metrics)"
    if out is None:
        raise UserError("forward_batch returned None", where=where, expected=expected,
                        found="None", hint="did you forget `return loss`?")
    loss = out if isinstance(out, torch.Tensor) else getattr(out, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise UserError("forward_batch returned no loss tensor", where=where, expected=expected,
                        found=describe_value(out),
                        hint="return StepOutput(loss, {...}) to add metrics" if isinstance(
                            out, (tuple, list)) else None)
    if loss.dim() != 0:
        raise UserError("forward_batch returned a loss that is not a scalar", where=where,
                        expected=expected, found=f"a tensor of shape {tuple(loss.shape)}",
                        hint="reduce it, e.g. loss.mean()")
    if not loss.requires_grad:
        raise UserError("forward_batch returned a loss without grad", where=where,
                        expected=expected, found="a tensor with requires_grad=False",
                        hint="compute the loss from the model's output, outside torch.no_grad()"
                             " and without .detach() or .item()")
    return loss


def first_batch_check(recipe: Any, cfg: Any, model: torch.nn.Module, loaders: Any,
                      device: torch.device) -> None:
    """One forward pass on the first training batch; the RNG and the model are left as they were
    (eval mode, so batch-norm statistics do not move; RNG state restored)."""
    rng = ckpt.rng_state()
    was_training = model.training
    try:
        batch = next(iter(loaders.train))
        if recipe.move_batch:
            batch = steps.move_to_device(batch, device)
        model.eval()
        ctx = StepContext(device, True, 0, 0)
        try:
            with steps.autocast(device, cfg.train.precision):
                out = recipe.forward_batch(model, batch, ctx)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"forward_batch fails on the first training batch: "
                            f"{type(exc).__name__}", where=_where(recipe), expected="a loss",
                            found=str(exc).strip().splitlines()[0][:300] if str(exc).strip()
                            else type(exc).__name__,
                            hint="python -m engine check NAME shows the batch and the model"
                            ) from exc
        check_step_output(out, recipe)
    finally:
        model.train(was_training)
        ckpt.set_rng_state(rng)
