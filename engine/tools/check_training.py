"""The checks of `python -m engine check` from the forward pass on: the loss, its gradients,
the optimizer and schedule, the settings they read, a short overfit on one batch, memory.
"""

from __future__ import annotations

import copy
import math

import torch

import steps
from engine.core import preflight as pf
from engine.core import reads
from engine.core.building import build_schedule, call_recipe, where_in_recipe
from engine.core.errors import UserError, raise_all
from engine.core.recipe import StepContext
from engine.tools.check_steps import OVERFIT_MARGIN, OVERFIT_STEPS, Outcome, _bytes, _count


def check_forward(have: dict) -> tuple[str, dict]:
    """forward: forward_batch runs on the first training batch and returns a loss."""
    recipe, model, device, cfg = have["recipe"], have["model"], have["device"], have["cfg"]
    batch = have["moved"]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with pf.watch_modules(model) as stack, torch.autograd.graph.saved_tensors_hooks(
            pack, lambda t: t):
        try:
            with steps.autocast(device, cfg.train.precision):
                out = recipe.forward_batch(model, batch, StepContext(device, True, 0, 0))
        except UserError:
            raise
        except Exception as exc:
            raise pf.forward_error(exc, recipe, stack, batch, "the first training batch") \
                from exc
    activations = sum(saved.values())
    kind = type(out).__name__
    return (f"forward_batch returns {kind} on the first training batch",
            {"out": out, "activations": activations})


def check_loss(have: dict) -> tuple[str, dict]:
    """loss: a finite scalar that requires grad, and the metrics."""
    recipe, out = have["recipe"], have["out"]
    loss = pf.check_step_output(out, recipe)
    value = float(loss.detach().float())
    if not math.isfinite(value):
        raise UserError("forward_batch returned a non-finite loss on the first batch",
                        where=where_in_recipe(recipe, "forward_batch"), expected="a finite loss",
                        found=f"loss = {value}", hint="look for NaN/inf in the inputs, a log of "
                        "0 or a division by 0 in the loss")
    metrics = list(getattr(out, "metrics", {}) or {})
    extra = f", metrics {', '.join(metrics)}" if metrics else ""
    return (f"{value:.4g} ({str(loss.dtype).removeprefix('torch.')} scalar, requires grad)"
            f"{extra}", {"loss": loss})


def check_gradients(have: dict) -> tuple[str, dict]:
    """gradients: every trainable parameter gets a gradient."""
    model, loss = have["model"], have["loss"]
    loss.backward()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in named if p.grad is None]
    model.zero_grad(set_to_none=True)
    if missing:
        raise UserError(f"{len(missing)} of {len(named)} trainable parameters get no gradient",
                        where=f"the model of {where_in_recipe(have['recipe'], 'build_model')}",
                        expected="every trainable parameter used by the loss",
                        found=", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""),
                        hint="use those layers in forward, or freeze them (requires_grad_(False))"
                        " or remove them")
    return f"all {len(named)} trainable tensors get a gradient", {}


def check_optimizer(have: dict) -> tuple[str, dict]:
    """optimizer: build_optimizer's optimizer covers the model's parameters."""
    recipe, model = have["recipe"], have["model"]
    optimizer = call_recipe(recipe, "build_optimizer", have["view"], model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UserError("build_optimizer did not return a torch.optim.Optimizer",
                        where=where_in_recipe(recipe, "build_optimizer"), expected="an Optimizer",
                        found=pf.describe_value(optimizer))
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    groups = optimizer.param_groups
    text = (f"{type(optimizer).__name__}, lr {groups[0]['lr']:g}, weight decay "
            f"{groups[0].get('weight_decay', 0):g}, {len(groups)} group(s)")
    if left:
        raise Outcome("warn", f"{text}; {len(left)} trainable tensors are not in it: "
                      f"{', '.join(left[:4])}")
    return text, {"optimizer": optimizer}


def check_scheduler(have: dict) -> tuple[str, dict]:
    """scheduler: build_scheduler's Schedule and what it steps on."""
    recipe, cfg = have["recipe"], have["cfg"]
    schedule = build_schedule(recipe, have["view"], have["optimizer"], have["loaders"].train)
    if schedule is None:
        return f"none: constant learning rate {cfg.train.learning_rate:g}", {}
    kind = type(schedule.scheduler).__name__
    on = {"validation": "on the validation loss, once per validation",
          "epoch": "once per epoch", "step": "once per optimizer step"}[schedule.interval]
    plateau = isinstance(schedule.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if plateau and schedule.interval != "validation":
        raise Outcome("warn", f"{kind} stepped {on}: it would get no metric (the loop steps it "
                      f"without one); use interval \"validation\"")
    if not plateau and schedule.interval == "validation":
        raise Outcome("warn", f"{kind} stepped with the validation loss, which it does not "
                      f"take as a metric")
    return f"{kind} {on}", {}


def check_settings(have: dict) -> tuple[str, dict]:
    """Every builder setting (train.warmup_steps, momentum, ...) set away from its default is
    read by one of the recipe's builders, as `run` requires (engine.core.reads)."""
    recipe, cfg, read = have["recipe"], have["cfg"], have["read"]
    if read is None:
        raise Outcome("skip", f"{type(cfg.train).__name__} is not a plain TrainConfig: the "
                      "settings its builders read are not recorded")
    raise_all(reads.unread_errors(recipe, cfg, read))
    taken = [k for k in reads.BUILDER_SETTINGS if k in read]
    return ("every builder setting that is set is read"
            + (f" (the builders read {', '.join(taken)})" if taken else ""), {})


def check_overfit(have: dict) -> tuple[str, dict]:
    """overfit: 25 steps on one batch lower its loss by at least OVERFIT_MARGIN."""
    recipe, cfg, device = have["recipe"], have["cfg"], have["device"]
    model = copy.deepcopy(have["model"])   # the real model stays as built
    optimizer = call_recipe(recipe, "build_optimizer", have["view"], model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = steps.autocast(device, cfg.train.precision)
    model.train()
    losses = []
    for i in range(OVERFIT_STEPS):
        ctx = StepContext(device, True, 0, i)
        with autocast:
            loss, _ = steps.split_output(recipe.forward_batch(model, have["moved"], ctx))
        value = float(loss.detach().float())   # a host sync per step: fine for 25 steps
        losses.append(value)
        if not math.isfinite(value):
            raise UserError("the loss becomes non-finite while training on one batch",
                            where=f"{where_in_recipe(recipe, 'forward_batch')}, step {i + 1} of "
                            f"{OVERFIT_STEPS}", expected="a finite loss",
                            found=f"loss {losses[0]:.4g} -> {value}",
                            hint="lower train.learning_rate or turn on train.gradient_clip_value")
        steps.backward(loss)
        steps.optimizer_step(optimizer, params, cfg.train.gradient_clip_value)
    first, last = losses[0], sum(losses[-3:]) / 3
    figures = f"loss {first:.4g} -> {last:.4g} in {OVERFIT_STEPS} steps on one batch"
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                for t in s.values() if isinstance(t, torch.Tensor))
    if not last < first * (1 - OVERFIT_MARGIN):
        raise UserError("the loss does not fall when training on one fixed batch",
                        where=f"recipe '{recipe.name}' (train.learning_rate = "
                        f"{cfg.train.learning_rate:g})",
                        expected=f"a fall of at least {OVERFIT_MARGIN:.0%}", found=figures,
                        hint="a learning rate too low or too high, a loss that does not depend "
                        "on the weights, or frozen layers; python -m engine lr-find helps")
    return f"{figures} ({1 - last / first:.0%} lower)", {"optimizer_state": state}


def check_memory(have: dict) -> tuple[str, dict]:
    """memory: parameters, gradients, optimizer state and activations per step."""
    model = have["model"]
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = have.get("optimizer_state")
    acts = have["activations"]
    parts = [f"parameters {_bytes(params)}", f"gradients {_bytes(grads)}",
             f"optimizer state {_bytes(state)} (measured)" if state is not None else
             f"optimizer state ~{_bytes(2 * grads)} (estimate: Adam's two moments)",
             f"activations {_bytes(acts)} (saved for backward, measured on the first batch)"]
    total = params + grads + (state if state is not None else 2 * grads) + acts
    return (f"{_count(have['n_params'])} parameters; ~{_bytes(total)} per step: "
            f"{', '.join(parts)}", {})


