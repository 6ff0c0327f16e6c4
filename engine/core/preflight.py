"""Checks before the first step: the cheap one every run makes (the first batch's structure and
one forward on it), so that a mistake costs seconds, not an epoch; `python -m engine check`
(engine.tools.check) runs the full list.

When the model raises, forward pre-hooks on every module tell which one was running and what it
got, so the message names the layer and both shapes instead of only torch's words.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch

import steps
from engine.core import rng
from engine.core.building import first_line, user_frame, where_in_recipe
from engine.core.errors import UserError, describe_value
from engine.core.recipe import StepContext

_log = logging.getLogger("engine.core.preflight")


# --- describing batches and functions --------------------------------------------------------

def describe(value: Any, depth: int = 0) -> str:
    """A batch's structure: `{x: float32[8, 12], y: (int64[8], [float32[8]])}`."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        where = "" if value.device.type == "cpu" else f"@{value.device}"
        return f"{dtype}[{', '.join(str(s) for s in value.shape)}]{where}"
    if depth > 4:
        return "..."
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v, depth + 1) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if attrs.has(type(value)):
        inner = ", ".join(f"{f.name}={describe(getattr(value, f.name), depth + 1)}"
                          for f in attrs.fields(type(value)))
        return f"{type(value).__name__}({inner})"
    return type(value).__name__


def _where(recipe: Any) -> str:
    return where_in_recipe(recipe, "forward_batch")


# --- which layer was running -----------------------------------------------------------------

# what a layer takes, from the attributes torch's layers carry (duck-typed: any module with them)
_TAKES = (
    ("in_features", lambda m: f"input [..., {m.in_features}] (in_features={m.in_features})"),
    ("in_channels", lambda m: f"input [N, {m.in_channels}, ...] (in_channels={m.in_channels})"),
    ("num_embeddings", lambda m: f"integer indices in [0, {m.num_embeddings}) "
                                 f"(num_embeddings={m.num_embeddings})"),
    ("normalized_shape", lambda m: f"input [..., {', '.join(map(str, m.normalized_shape))}] "
                                   f"(normalized_shape={tuple(m.normalized_shape)})"),
    ("num_features", lambda m: f"input [N, {m.num_features}, ...] "
                               f"(num_features={m.num_features})"),
    ("embed_dim", lambda m: f"input [..., {m.embed_dim}] (embed_dim={m.embed_dim})"),
    ("input_size", lambda m: f"input [..., {m.input_size}] (input_size={m.input_size})"),
)


@attrs.frozen
class Culprit:
    """The innermost module running when the model raised, and the inputs it got."""

    name: str
    module: torch.nn.Module
    inputs: str

    def layer(self) -> str:
        """`layer 'name' = Linear(in_features=..., ...)`, at most 100 characters."""
        text = repr(self.module).splitlines()[0]
        text = text if len(text) <= 100 else text[:97] + "..."
        return f"layer '{self.name or '(the model)'}' = {text}"

    def expected(self) -> str | None:
        """What this layer takes, from its attributes; None when unknown."""
        for attr, render in _TAKES:
            if hasattr(self.module, attr):
                try:
                    return render(self.module)
                except Exception:   # an unusual attribute type: the repr still says it
                    return None
        return None


@contextlib.contextmanager
def watch_modules(model: torch.nn.Module) -> Iterator[list]:
    """Within the block, the yielded list holds the modules that were entered and not left:
    after an exception its last entry is where the model failed."""
    stack: list[Culprit] = []
    handles = []

    def enter(name: str):
        def hook(module, args):
            stack.append(Culprit(name, module, describe(args if len(args) != 1 else args[0])))
        return hook

    def leave(module, args, output):
        if stack and stack[-1].module is module:
            stack.pop()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def forward_error(exc: Exception, recipe: Any, stack: Sequence[Culprit], batch: Any,
                  what: str) -> UserError:
    """A UserError for an exception raised while `forward_batch` ran on `batch` ("the first
    training batch", "dataset[0]"): names the layer and both shapes where it can."""
    found = first_line(exc)
    frame = user_frame(exc)
    if stack:
        culprit = stack[-1]
        return UserError(
            f"the model cannot take {what}: {type(exc).__name__} in layer "
            f"'{culprit.name or type(culprit.module).__name__}'",
            where=f"{culprit.layer()}, built by {where_in_recipe(recipe, 'build_model')}",
            expected=culprit.expected() or "an input this layer accepts",
            found=f"{culprit.inputs} ({found})",
            hint=f"{what} is {describe(batch)}; the model was written for other shapes, or "
                 f"{where_in_recipe(recipe, 'forward_batch')} passes the wrong part of it")
    return UserError(f"forward_batch fails on {what}: {type(exc).__name__}",
                     where=_where(recipe) + (f" at {frame}" if frame else ""),
                     expected="a loss", found=found,
                     hint=f"{what} is {describe(batch)}")


# --- the output of forward_batch -------------------------------------------------------------

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


def nonfinite_inputs(batch: Any) -> list[str]:
    """`batch[0]: 6 NaN` for each floating tensor of `batch` holding NaN or inf (one sync)."""
    found = []
    for path, tensor in steps.iter_tensors(batch):
        if tensor.is_floating_point() or tensor.is_complex():
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            if nan or inf:
                parts = [f"{nan} NaN" if nan else "", f"{inf} inf" if inf else ""]
                found.append(f"{path}: {' and '.join(p for p in parts if p)} of "
                             f"{tensor.numel()} values")
    return found


# --- the check every run makes ---------------------------------------------------------------

def first_batch(recipe: Any, loader: Any, which: str) -> Any:
    """The loader's first batch, or a UserError naming build_loaders (a collate or dataset
    error). Draws from the global RNG: callers restore it."""
    return draw_first_batch(recipe, iter(loader), which)


def draw_first_batch(recipe: Any, batches: Any, which: str = "training") -> Any:
    """The next batch of an iterator over the recipe's loader, a loader mistake (an empty
    iterator, a collate or dataset error) as a UserError naming build_loaders."""
    try:
        return next(batches)
    except StopIteration:
        raise UserError(f"the {which} loader yields no batch", where=where_in_recipe(
            recipe, "build_loaders"), expected="at least one batch", found="an empty iterator"
            ) from None
    except Exception as exc:
        frame = user_frame(exc)
        raise UserError(f"the {which} loader fails on its first batch: {type(exc).__name__}",
                        where=where_in_recipe(recipe, "build_loaders") + (f" at {frame}" if frame
                                                                    else ""),
                        expected="a dataset and collate_fn that make a batch",
                        found=first_line(exc)) from exc


def move_first_batch(recipe: Any, batch: Any, device: torch.device) -> Any:
    """The first batch checked for NaN and inf (a warning) and on `device` as the loop moves
    every batch; a batch the engine cannot walk or copy is the loader's, named by structure."""
    try:
        bad = nonfinite_inputs(batch)
        if bad:
            _log.warning("warning: the first training batch holds non-finite inputs (%s); "
                         "forward_batch must handle them or the loss will be NaN", "; ".join(bad))
        return steps.move_to_device(batch, device) if recipe.move_batch else batch
    except Exception as exc:
        raise UserError(f"the first training batch cannot be moved to {device}: "
                        f"{type(exc).__name__}", where=where_in_recipe(recipe, "build_loaders"),
                        expected="tensors inside dicts, lists, tuples or attrs/dataclass "
                        "records", found=f"{_safe_describe(batch)} ({first_line(exc)})",
                        hint="return plain containers from collate_fn, or set "
                        "move_batch=False in the Recipe and move the batch in forward_batch"
                        ) from exc


def _safe_describe(batch: Any) -> str:
    try:
        return describe(batch)
    except Exception:   # the structure that failed to move may fail to describe too
        return type(batch).__name__


def first_batch_check(recipe: Any, cfg: Any, model: torch.nn.Module, loaders: Any,
                      device: torch.device) -> None:
    """`check_batch` on the training loader's first batch (for `engine check`, which trains
    nothing); the RNG is left as it was. A run checks the batch its loop draws instead."""
    saved_rng = rng.rng_state()
    try:
        check_batch(recipe, cfg, model, first_batch(recipe, loaders.train, "training"), device)
    finally:
        rng.set_rng_state(saved_rng)


def check_batch(recipe: Any, cfg: Any, model: torch.nn.Module, batch: Any,
                device: torch.device) -> None:
    """The batch's structure and one forward pass on it, so a mistake costs seconds, not an
    epoch; the model is left as it was (eval mode for the pass, so batch-norm statistics do
    not move). NaN or inf in the batch is a warning (logged): a recipe may impute them."""
    was_training = model.training
    try:
        batch = move_first_batch(recipe, batch, device)
        model.eval()
        ctx = StepContext(device, True, 0, 0)
        with watch_modules(model) as stack:
            try:
                with steps.autocast(device, cfg.train.precision):
                    out = recipe.forward_batch(model, batch, ctx)
            except UserError:
                raise
            except Exception as exc:
                raise forward_error(exc, recipe, stack, batch,
                                    "the first training batch") from exc
        check_step_output(out, recipe)
    finally:
        model.train(was_training)
