"""The step functions a training loop is made of. Each works alone from a script:

    for batch in loader:
        loss = train_step(model, batch, forward_batch, ctx, optimizer, clip=1.0)

`engine.fit` is built from the same pieces (`forward_loss`, `backward`, `optimizer_step`), so a
hand-composed loop of them and `fit` give the same weights (tests/steps/test_steps.py).
"""

from __future__ import annotations

from typing import Any

import torch

_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
# torch's own inference-mode guard (a C++ object: on from its creation, off at __exit__) where
# this torch has it; torch.inference_mode() wraps one in a Python class, six Python calls a
# batch. Both take the mode as their one argument.
_INFERENCE = getattr(torch._C, "_InferenceMode", torch.inference_mode)


def split_output(out: Any) -> tuple[torch.Tensor, dict]:
    """`forward_batch`'s result as (loss, metrics): a tensor, or a record with .loss/.metrics."""
    if isinstance(out, torch.Tensor):
        return out, {}
    return out.loss, dict(getattr(out, "metrics", {}) or {})


def forward_loss(model: torch.nn.Module, batch: Any, forward_batch: Any, ctx: Any,
                 autocast: Any = None) -> torch.Tensor:
    """`forward_batch`'s loss on one batch, under `autocast` when given (a reusable context
    from `steps.autocast`; None runs in fp32 with no context at all)."""
    if autocast is None:
        out = forward_batch(model, batch, ctx)
    else:
        with autocast:
            out = forward_batch(model, batch, ctx)
    return out if isinstance(out, torch.Tensor) else out.loss


def backward(loss: torch.Tensor, scale: float = 1.0, scaler: Any = None) -> None:
    """Backpropagate `loss * scale` (scale = 1/k for a k-batch accumulation), through a
    GradScaler when fp16 needs one."""
    if scale != 1.0:
        loss = loss * scale
    if scaler is not None:
        loss = scaler.scale(loss)
    loss.backward()


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the gradients, as a tensor on their device (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if _total_norm is not None:
        return _total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                   clip: float = 0.0, scaler: Any = None) -> torch.Tensor:
    """Clip (total norm at most `clip`, 0 = off), step, zero the gradients.

    Returns the total gradient norm before clipping, on the device (read it later, not now).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = grad_norm(params)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def train_step(model: torch.nn.Module, batch: Any, forward_batch: Any, ctx: Any,
               optimizer: torch.optim.Optimizer, *, clip: float = 0.0, scaler: Any = None,
               autocast: Any = None) -> torch.Tensor:
    """One full optimizer step on one batch; returns the detached loss (no host sync)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss = forward_loss(model, batch, forward_batch, ctx, autocast)
    backward(loss, scaler=scaler)
    optimizer_step(optimizer, params, clip, scaler)
    return loss.detach()


def eval_step(model: torch.nn.Module, batch: Any, forward_batch: Any, ctx: Any,
              autocast: Any = None, inference: bool = True) -> tuple[torch.Tensor, dict]:
    """The loss and metrics of one batch without gradients (the caller sets model.eval()),
    under torch.inference_mode() (no autograd bookkeeping at all), or torch.no_grad() with
    `inference=False` for a model that keeps tensors from validation for use in training.
    What `forward_batch` computes there has no autograd history, so nothing is detached
    (a call per metric per batch); a metric it returns from outside, e.g. a tensor kept from
    training, is detached."""
    # the guard per batch, not around the loader: the data loading stays outside inference
    # mode, so a dataset that caches tensors never caches inference tensors
    with _INFERENCE(True) if inference else torch.no_grad():
        if autocast is None:
            out = forward_batch(model, batch, ctx)
        else:
            with autocast:
                out = forward_batch(model, batch, ctx)
    loss, metrics = split_output(out)
    if loss.requires_grad:
        loss = loss.detach()
    for key, value in metrics.items():
        if value.requires_grad:
            metrics[key] = value.detach()
    return loss, metrics
