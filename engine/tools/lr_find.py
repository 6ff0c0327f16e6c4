"""`python -m engine lr-find NAME`: the learning-rate range test (Smith 2015, arXiv:1506.01186).

From a fresh model, the rate rises exponentially from `min_lr` to `max_lr` over up to
`num_steps` training batches; the loss is smoothed with a debiased exponential moving average
and the test stops once the smoothed loss exceeds `diverge_factor` times its minimum.

The suggestion is the rate of the lowest smoothed loss divided by 10. The other usual choice,
the steepest descent of the smoothed loss, lands where the loss first starts to move; during
the test that point depends on how many steps each decade of rates gets (the loss falls once the
*accumulated* rate is large enough, not the current one), while the minimum sits just below the
rate at which training becomes unstable, which is a property of the problem. One tenth of it is
the classic safety margin: on a quadratic, divergence sets in at 2/L and the best constant rate
is about 1/L (L the largest curvature), so min/10 lands within a factor of a few of it.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from engine.core.devices import resolve_device
from engine.core.distributed import World
from engine.core.errors import UserError, UserErrors
from engine.core.preflight import first_batch_check
from engine.core.recipe import StepContext
from engine.io.files import atomic_write_bytes, atomic_write_json
from engine.io.registry import resolve
from engine.io.run_dir import check_writable, new_run_id, unwritable


@attrs.frozen
class LRFindResult:
    """Rates tried, the smoothed loss at each (`losses`), the suggestion (None if the test was
    too short to make one) and the raw losses."""

    lrs: tuple
    losses: tuple
    suggested_lr: float | None
    raw_losses: tuple = ()


def _cycle(loader: Iterable) -> Iterator:
    """The loader's batches, again from the start when it runs out (a short training set)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UserError("the training loader yields no batches", where="build_loaders",
                            expected="a training loader with at least one batch",
                            found="an empty loader")


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The rate of the lowest smoothed loss / 10 (see the module docstring for why)."""
    if len(lrs) < 3:
        return None
    # the first debiased averages rest on a handful of batches: a lucky one is no minimum
    skip = min(10, len(lrs) // 10)
    best = min(range(skip, len(losses)), key=lambda i: losses[i])
    return lrs[best] / 10


def _check_settings(min_lr: float, max_lr: float, num_steps: int, smoothing: float,
                    diverge_factor: float) -> None:
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got {min_lr}, {max_lr}")
    if num_steps < 2 or not 0 <= smoothing < 1 or diverge_factor <= 1:
        raise ValueError("need num_steps >= 2, 0 <= smoothing < 1 and diverge_factor > 1")


def lr_range_test(model: torch.nn.Module, loader: Iterable, forward_batch: Any,
                  optimizer: torch.optim.Optimizer, device: torch.device | str, *,
                  min_lr: float = 1e-7, max_lr: float = 10.0, num_steps: int = 200,
                  smoothing: float = 0.98, diverge_factor: float = 4.0,
                  move_batch: bool = True, progress: bool = False) -> LRFindResult:
    """Train `model` in place with `optimizer` at exponentially rising rates; see the module
    docstring. Build a fresh model and optimizer for it: both are changed.

    Each param group keeps its ratio to the first group's rate. The test runs in fp32, without
    clipping; it reads the loss every step (a host sync), which a range test needs to stop.
    """
    from steps import move_to_device, split_output  # deferred: start-up time

    _check_settings(min_lr, max_lr, num_steps, smoothing, diverge_factor)
    device = torch.device(device)
    base = optimizer.param_groups[0]["lr"] or 1.0
    ratios = [(g["lr"] or base) / base for g in optimizer.param_groups]
    growth = (max_lr / min_lr) ** (1 / (num_steps - 1))
    lrs, losses, raw = [], [], []
    avg, best = 0.0, math.inf
    bar = None
    if progress:
        from tqdm import tqdm  # deferred: start-up time
        bar = tqdm(total=num_steps, desc="lr-find", file=sys.stderr, leave=False)
    model.train()
    batches = _cycle(loader)
    try:
        for i in range(num_steps):
            lr = min_lr * growth ** i
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            batch = next(batches)
            if move_batch:
                batch = move_to_device(batch, device, non_blocking=device.type == "cuda")
            loss, _ = split_output(forward_batch(model, batch, StepContext(device, True, 0, i)))
            value = float(loss.detach())  # the one sync a range test needs: it decides to stop
            if not math.isfinite(value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (i + 1))  # debiased: the average starts at 0
            lrs.append(lr)
            losses.append(smoothed)
            raw.append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.4g}")
            if i > 0 and smoothed > diverge_factor * best:
                break
            best = min(best, smoothed)
    finally:
        if bar is not None:
            bar.close()
        optimizer.zero_grad(set_to_none=True)
    return LRFindResult(tuple(lrs), tuple(losses), suggest(lrs, losses), tuple(raw))


def plot(result: LRFindResult, path: Path, title: str) -> None:
    """lr_find.png: smoothed (and raw) loss against the rate, log x-axis, suggestion marked."""
    import matplotlib  # deferred: start-up time
    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt  # deferred: start-up time

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        ax.plot(result.lrs, result.raw_losses, color="0.75", lw=0.8, label="loss")
        ax.plot(result.lrs, result.losses, color="C0", lw=1.8, label="smoothed loss")
        if result.suggested_lr is not None:
            ax.axvline(result.suggested_lr, color="C3", ls="--",
                       label=f"suggested {result.suggested_lr:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        if result.losses:  # the divergence would squash the interesting part of the curve
            low, first = min(result.losses), result.losses[0]
            ax.set_ylim(min(low, min(result.raw_losses)) - 0.05 * abs(first - low),
                        max(first, low) + 0.25 * abs(first - low) + 1e-12)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(path, buffer.getvalue())
    finally:
        plt.close(fig)


def _new_folder(root: Path) -> tuple[Path, str]:
    try:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run_id = new_run_id()
            try:
                (root / run_id).mkdir()
            except FileExistsError:
                continue
            return root / run_id, run_id
    except OSError as exc:
        raise unwritable(root, f"{exc.strerror or exc}") from None
    raise UserError("no free run id", where=str(root), expected="a new id", found="collisions")


def _toml_float(x: float) -> str:
    text = f"{x:.2g}"
    return text if any(c in text for c in ".e") else text + ".0"


def cli(name: str, *, recipes: str | None = None, config_file: str | None = None,
        sets: Sequence[str] = (), output_dir: str | None = None) -> int:
    """`engine lr-find NAME`: run the range test on a fresh model of the recipe and write
    `lr_find.json` and `lr_find.png` into `{output_dir}/lr_find/{name}/{run_id}/`; 0."""
    from engine.core.building import (
        build_objects,
        check_inputs,
        first_line,
        user_frame,
        where_in_recipe,
    )

    _, recipe, cfg = resolve(name, recipes=recipes, config_file=config_file, sets=sets)
    out = output_dir or cfg.train.output_dir
    # before the sweep: a folder that cannot be made would throw its whole result away
    try:
        check_writable(Path(out) / "lr_find" / name, out)
    except UserError as exc:
        if output_dir:   # name the flag the user typed, not the config key it sets
            exc.where = f"--output-dir {output_dir}"
        raise
    # built and checked as `run` and `check` build them: seeded, the recipe's mistakes named
    check_inputs(recipe, cfg)
    device = resolve_device(cfg.train.device)
    model, loaders, optimizer, _ = build_objects(recipe, cfg, World(), device)
    first_batch_check(recipe, cfg, model, loaders, device)
    try:
        result = lr_range_test(model, loaders.train, recipe.forward_batch, optimizer, device,
                               move_batch=recipe.move_batch, progress=True)
    except (UserError, UserErrors):
        raise
    except Exception as exc:   # recipe code (forward_batch, the loader) past the first batch
        frame = user_frame(exc)
        raise UserError(f"the range test failed: {type(exc).__name__}",
                        where=where_in_recipe(recipe, "forward_batch") + (
                            f" at {frame}" if frame else ""),
                        expected="forward_batch to return a loss on every training batch",
                        found=first_line(exc)) from exc
    if result.suggested_lr is None:
        raise UserError("the learning-rate range test could not suggest a rate",
                        where=f"recipe '{name}'", expected="a finite training loss for at least "
                        "3 steps", found=f"{len(result.lrs)} finite step(s) from lr 1e-7",
                        hint="check the data for inf/NaN and the loss function")
    folder, _ = _new_folder(Path(out) / "lr_find" / name)
    atomic_write_json(folder / "lr_find.json", {
        "lrs": list(result.lrs), "losses": list(result.losses),
        "suggested_lr": result.suggested_lr})
    plot(result, folder / "lr_find.png", f"lr-find: {name}")
    flag = _toml_float(result.suggested_lr)
    print(f"lr-find: {folder}")
    print(f"suggested learning rate: {flag} ({len(result.lrs)} steps, lowest smoothed loss "
          f"{min(result.losses):.4g})")
    print(f"use: --set train.learning_rate={flag}")
    return 0
