"""`python -m engine check NAME`: the full preflight, one line per check.

    ok    config     AutoencoderConfig from recipes.toml [autoencoder]
    FAIL  forward    the model cannot take the first training batch: ...
    skip  loss       needs forward

Each check is a function of what the earlier ones made (`have`); one that needs something a
failed check did not make is reported as skipped. Nothing is trained for real and nothing is
written: the overfit check trains a copy of the model, and the global RNG is restored at the end.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import steps
from engine.core import preflight as pf
from engine.core import rng
from engine.core.building import (
    build_schedule,
    call_recipe,
    first_line,
    loader_sizes,
    user_frame,
    where_in_recipe,
)
from engine.core.errors import UserError, UserErrors
from engine.core.recipe import StepContext

OVERFIT_STEPS = 25
OVERFIT_MARGIN = 0.10   # the loss on one fixed batch should fall by at least 10% in 25 steps


class Outcome(Exception):
    """A check's verdict other than ok: warn (detail) or FAIL (detail and the error blocks)."""

    def __init__(self, status: str, detail: str, error: Any = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.error = status, detail, error


def _fail(error: UserError | UserErrors) -> Outcome:
    errors = error.errors if isinstance(error, UserErrors) else [error]
    detail = errors[0].what + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return Outcome("FAIL", detail, error)


def _count(n: int) -> str:
    return f"{n:,}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --- the checks: each takes `have` and returns (detail, products) or raises Outcome ----------

def check_registry(have: dict) -> tuple[str, dict]:
    from engine.io.registry import find_entry, find_registry
    path = find_registry(have["recipes"])
    entry = find_entry(have["name"], path)
    return f"{path} [{entry.name}]", {"entry": entry}


def check_recipe(have: dict) -> tuple[str, dict]:
    from engine.io.registry import import_recipe
    recipe = import_recipe(have["entry"])
    return f"{have['entry'].import_path} (Recipe '{recipe.name}')", {"recipe": recipe}


def check_config(have: dict) -> tuple[str, dict]:
    from engine.io.layering import Layer, build_config, config_file_layer, parse_set
    entry, recipe = have["entry"], have["recipe"]
    layers = [Layer(entry.defaults, str(entry.file), entry.name)]
    sources = [f"{entry.file.name} [{entry.name}]"]
    if have["config_file"] is not None:
        layers.append(config_file_layer(have["config_file"]))
        sources.append(f"--config {have['config_file']}")
    layers += [parse_set(flag) for flag in have["sets"]]
    sources += [f"--set {flag}" for flag in have["sets"]]
    cfg = build_config(recipe.config, layers)
    return f"{recipe.config.__name__} from defaults < {' < '.join(sources)}", {"cfg": cfg}


def check_device(have: dict) -> tuple[str, dict]:
    from engine.core.devices import resolve_device
    train = have["cfg"].train
    device = resolve_device(train.device)
    if train.precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 needs a CUDA device", where='train.precision = "fp16"',
                        expected='"bf16" or "fp32" on this device', found=f"device {device}",
                        hint='use precision = "bf16" on CPU')
    return (f'{device} (train.device = "{train.device}", precision {train.precision})',
            {"device": device})


def check_output(have: dict) -> tuple[str, dict]:
    import os

    from engine.io.run_dir import runs_root
    output_dir = have["cfg"].train.output_dir
    root = runs_root(output_dir, have["entry"].name)
    existing = next(p for p in (root, *root.parents) if p.exists() or p == Path("."))
    problem = (f"{existing} is a file, not a folder" if not existing.is_dir() else
               f"{existing} is not writable" if not os.access(existing, os.W_OK | os.X_OK)
               else None)
    if problem:   # the same words as `run`; checked without writing anything
        raise UserError("the output directory cannot be written",
                        where=f'train.output_dir = "{output_dir}"',
                        expected="a folder this user can create files in", found=problem)
    return f"runs go to {root}/RUN_ID" + ("" if root.exists() else " (created by run)"), {}


def check_model(have: dict) -> tuple[str, dict]:
    recipe, cfg = have["recipe"], have["cfg"]
    torch.manual_seed(cfg.train.seed)   # the same weights `run` starts from
    model = call_recipe(recipe, "build_model", cfg)
    if not isinstance(model, torch.nn.Module):
        raise UserError("build_model did not return a torch.nn.Module",
                        where=where_in_recipe(recipe, "build_model"), expected="an nn.Module",
                        found=pf.describe_value(model))
    model.to(have["device"])
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"{type(model).__name__}: {_count(total)} parameters, {_count(trainable)} trainable",
            {"model": model, "n_params": total})


def check_loaders(have: dict) -> tuple[str, dict]:
    recipe = have["recipe"]
    loaders = call_recipe(recipe, "build_loaders", have["cfg"])
    sizes = loader_sizes(recipe, loaders)
    (n_train, train), (n_val, val) = sizes["training"], sizes["validation"]
    return (f"train {n_train} batches/epoch ({train}), val {n_val} batches ({val})",
            {"loaders": loaders})


def check_train_batch(have: dict) -> tuple[str, dict]:
    batch = pf.first_batch(have["recipe"], have["loaders"].train, "training")
    return pf.describe(batch), {"batch": batch}


def check_val_batch(have: dict) -> tuple[str, dict]:
    batch = pf.first_batch(have["recipe"], have["loaders"].val, "validation")
    return pf.describe(batch), {"val_batch": batch}


def check_values(have: dict) -> tuple[str, dict]:
    bad = [f"train {b}" for b in pf.nonfinite_inputs(have["batch"])]
    bad += [f"val {b}" for b in pf.nonfinite_inputs(have["val_batch"])] if "val_batch" in have \
        else []
    if bad:
        raise Outcome("warn", "non-finite inputs: " + "; ".join(bad) + " (forward_batch must "
                      "handle them, or the loss is NaN)")
    return "no NaN or inf in the first train and val batches", {}


def check_placement(have: dict) -> tuple[str, dict]:
    recipe, device = have["recipe"], have["device"]
    batch = steps.move_to_device(have["batch"], device) if recipe.move_batch else have["batch"]
    model_devices = {p.device for p in have["model"].parameters()} or {device}
    away = [f"{path} on {t.device}" for path, t in steps.iter_tensors(batch)
            if t.device not in model_devices]
    products = {"moved": batch}
    if away:
        raise Outcome("warn", f"{', '.join(away[:4])}{' ...' if len(away) > 4 else ''}; model "
                      f"on {', '.join(str(d) for d in model_devices)} (recipe.move_batch is "
                      f"{recipe.move_batch}: forward_batch must move them)")
    how = "moved by the engine" if recipe.move_batch else "placed by build_loaders"
    return f"every batch tensor on {device} like the model ({how})", products


def check_sample(have: dict) -> tuple[str, dict]:
    recipe, model, device = have["recipe"], have["model"], have["device"]
    loader = have["loaders"].train
    dataset = getattr(loader, "dataset", None)
    collate = getattr(loader, "collate_fn", None)
    if dataset is None or collate is None or not hasattr(dataset, "__getitem__"):
        raise Outcome("skip", "the training loader has no map-style dataset to index")
    try:
        sample = collate([dataset[0]])
    except Exception as exc:
        raise UserError("dataset[0] cannot be collated into a batch", where=where_in_recipe(
            recipe, "build_loaders"), expected="a sample the loader's collate_fn takes",
            found=first_line(exc)) from exc
    if recipe.move_batch:
        sample = steps.move_to_device(sample, device)
    was_training = model.training
    model.eval()   # a batch of one: batch norm in training mode would refuse it
    try:
        with torch.no_grad(), pf.watch_modules(model) as stack:
            try:
                recipe.forward_batch(model, sample, StepContext(device, False, 0, 0))
            except Exception as exc:
                raise pf.forward_error(exc, recipe, stack, sample, "dataset[0]") from exc
    finally:
        model.train(was_training)
    return f"reaches the model as a batch of one: {pf.describe(sample)}", {}


def check_forward(have: dict) -> tuple[str, dict]:
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
    recipe, model = have["recipe"], have["model"]
    optimizer = call_recipe(recipe, "build_optimizer", have["cfg"], model)
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
    recipe, cfg = have["recipe"], have["cfg"]
    schedule = build_schedule(recipe, cfg, have["optimizer"], have["loaders"].train)
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


def check_overfit(have: dict) -> tuple[str, dict]:
    recipe, cfg, device = have["recipe"], have["cfg"], have["device"]
    model = copy.deepcopy(have["model"])   # the real model stays as built
    optimizer = call_recipe(recipe, "build_optimizer", cfg, model)
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


# --- running them ----------------------------------------------------------------------------

CHECKS: tuple[tuple[str, Callable, tuple[str, ...]], ...] = (
    ("registry", check_registry, ()),
    ("recipe", check_recipe, ("entry",)),
    ("config", check_config, ("recipe",)),
    ("device", check_device, ("cfg",)),
    ("output dir", check_output, ("cfg",)),
    ("model", check_model, ("cfg", "device")),
    ("loaders", check_loaders, ("cfg",)),
    ("train batch", check_train_batch, ("loaders",)),
    ("val batch", check_val_batch, ("loaders",)),
    ("batch values", check_values, ("batch",)),
    ("batch device", check_placement, ("batch", "model")),
    ("dataset[0]", check_sample, ("loaders", "model")),
    ("forward", check_forward, ("moved",)),
    ("loss", check_loss, ("out",)),
    ("gradients", check_gradients, ("loss",)),
    ("optimizer", check_optimizer, ("model",)),
    ("scheduler", check_scheduler, ("optimizer", "loaders")),
    ("overfit", check_overfit, ("loss",)),
    ("memory", check_memory, ("activations",)),
)

# which check makes what, to say why a check was skipped
_MADE_BY = {"entry": "registry", "recipe": "recipe", "cfg": "config", "device": "device",
            "model": "model", "loaders": "loaders", "batch": "train batch",
            "moved": "batch device", "out": "forward", "loss": "loss",
            "optimizer": "optimizer", "activations": "forward"}


def run_checks(have: dict, emit: Callable[[str, str, str], None]) -> list:
    """Run every check in order; `emit(status, name, detail)` per line. Returns the errors."""
    errors: list = []
    for name, check, needs in CHECKS:
        missing = [_MADE_BY[k] for k in needs if k not in have]
        if missing:
            emit("skip", name, f"skipped: needs {missing[0]}")
            continue
        try:
            detail, products = check(have)
        except Outcome as outcome:
            if outcome.status == "FAIL":
                errors.append(outcome.error)
            emit(outcome.status, name, outcome.detail)
            continue
        except (UserError, UserErrors) as exc:
            outcome = _fail(exc)
            errors.append(exc)
            emit("FAIL", name, outcome.detail)
            continue
        except Exception as exc:   # recipe code the check calls directly (forward_batch, ...)
            error = UserError(f"{name} check failed: {type(exc).__name__}",
                              where=user_frame(exc) or f"recipe '{have['name']}'",
                              expected=f"the {name} check to run", found=first_line(exc))
            errors.append(error)
            emit("FAIL", name, error.what)
            continue
        have.update(products)
        emit("ok", name, detail)
    return errors


def cli(name: str, *, recipes: str | None = None, config_file: str | None = None,
        sets: Sequence[str] = ()) -> int:
    """See `engine.core.preflight.cli`."""
    width = max(len(n) for n, _, _ in CHECKS)
    counts: dict[str, int] = {}

    def emit(status: str, check: str, detail: str) -> None:
        counts[status] = counts.get(status, 0) + 1
        print(f"{status:<4}  {check:<{width}}  {detail}", flush=True)

    have = {"name": name, "recipes": recipes, "config_file": config_file, "sets": tuple(sets)}
    saved_rng = rng.rng_state()
    try:
        errors = run_checks(have, emit)
    finally:
        rng.set_rng_state(saved_rng)
    print(f"{counts.get('ok', 0)} ok, {counts.get('warn', 0)} warn, {counts.get('FAIL', 0)} "
          f"FAIL, {counts.get('skip', 0)} skipped")
    for error in errors:
        print(error.render(), file=sys.stderr)
    return 2 if errors else 0
