"""The checks of `python -m engine check` up to the first batch on the model: the registry,
the recipe, the config, the device, the output folder, the model, the loaders and their first
batches (engine.tools.check runs them; engine.tools.check_training holds the rest).

Each check takes `have` (what the earlier checks made) and returns (detail, products), or
raises Outcome (warn or FAIL) or a UserError (FAIL).
"""

from __future__ import annotations

from typing import Any

import torch

import steps
from engine.core import preflight as pf
from engine.core import reads
from engine.core.building import (
    call_recipe,
    checked_model,
    first_line,
    loader_sizes,
    seed_everything,
    where_in_recipe,
)
from engine.core.devices import check_precision, resolve_device
from engine.core.errors import UserError, UserErrors
from engine.core.recipe import StepContext
from engine.io.layering import build_config
from engine.io.registry import find_entry, find_registry, import_recipe, layers_for
from engine.io.run_dir import check_writable, runs_root

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
    """registry: the recipe's entry is found in recipes.toml."""
    path = find_registry(have["recipes"])
    entry = find_entry(have["name"], path)
    return f"{path} [{entry.name}]", {"entry": entry}


def check_recipe(have: dict) -> tuple[str, dict]:
    """recipe: the entry's import path gives a Recipe."""
    recipe = import_recipe(have["entry"])
    return f"{have['entry'].import_path} (Recipe '{recipe.name}')", {"recipe": recipe}


def check_config(have: dict) -> tuple[str, dict]:
    """config: every layer structures into the recipe's config, keys, types and ranges."""
    entry, recipe = have["entry"], have["recipe"]
    layers, sources = layers_for(entry, have["config_file"], have["sets"])   # as `run` does
    cfg = build_config(recipe.config, layers)
    view, read = reads.recording(cfg)   # what the builders get: it notes the settings read
    return (f"{recipe.config.__name__} from defaults < {' < '.join(sources)}",
            {"cfg": cfg, "view": view, "read": read})


def check_device(have: dict) -> tuple[str, dict]:
    """device: train.device and precision can be had here."""
    train = have["cfg"].train
    device = resolve_device(train.device)
    check_precision(device, train.precision)
    return (f'{device} (train.device = "{train.device}", precision {train.precision})',
            {"device": device})


def check_output(have: dict) -> tuple[str, dict]:
    """output dir: the runs folder can be written."""
    output_dir = have["cfg"].train.output_dir
    root = runs_root(output_dir, have["entry"].name)
    check_writable(root, output_dir)   # the same check and words as `run`, writing nothing
    return f"runs go to {root}/RUN_ID" + ("" if root.exists() else " (created by run)"), {}


def check_model(have: dict) -> tuple[str, dict]:
    """model: build_model returns an nn.Module; its parameter count."""
    recipe, cfg = have["recipe"], have["cfg"]
    seed_everything(cfg.train.seed)   # the same weights `run` starts from
    model = call_recipe(recipe, "build_model", have["view"])
    checked_model(recipe, model)
    model.to(have["device"])
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"{type(model).__name__}: {_count(total)} parameters, {_count(trainable)} trainable",
            {"model": model, "n_params": total})


def check_loaders(have: dict) -> tuple[str, dict]:
    """loaders: build_loaders returns Loaders with non-empty, sized loaders."""
    recipe = have["recipe"]
    loaders = call_recipe(recipe, "build_loaders", have["view"])
    sizes = loader_sizes(recipe, loaders)
    (n_train, train), (n_val, val) = sizes["training"], sizes["validation"]
    return (f"train {n_train} batches/epoch ({train}), val {n_val} batches ({val})",
            {"loaders": loaders})


def check_train_batch(have: dict) -> tuple[str, dict]:
    """train batch: the first training batch, and its structure."""
    batch = pf.first_batch(have["recipe"], have["loaders"].train, "training")
    return pf.describe(batch), {"batch": batch}


def check_val_batch(have: dict) -> tuple[str, dict]:
    """val batch: the first validation batch, and its structure."""
    batch = pf.first_batch(have["recipe"], have["loaders"].val, "validation")
    return pf.describe(batch), {"val_batch": batch}


def check_values(have: dict) -> tuple[str, dict]:
    """batch values: NaN or inf in the first batches (a warning)."""
    bad = [f"train {b}" for b in pf.nonfinite_inputs(have["batch"])]
    bad += [f"val {b}" for b in pf.nonfinite_inputs(have["val_batch"])] if "val_batch" in have \
        else []
    if bad:
        raise Outcome("warn", "non-finite inputs: " + "; ".join(bad) + " (forward_batch must "
                      "handle them, or the loss is NaN)")
    return "no NaN or inf in the first train and val batches", {}


def check_placement(have: dict) -> tuple[str, dict]:
    """batch device: every batch tensor ends up on the model's device."""
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
    """dataset[0]: one sample reaches the model as a batch of one; a shape error names its
    layer."""
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


