"""The loop's invariants (DESIGN.md 5, rules 1-7, 9, 10) as properties of `fit`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import attrs
import pytest
import strategies as strat
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted import make_cfg, recipe

from engine import Event, fit
from engine.core.events import listens_to


def reference(val_losses, epochs, every, patience, min_delta):
    """What the rules say should happen, computed independently of the engine."""
    validations, best, best_epoch, bad, improvements = [], None, None, 0, []
    stopped = False
    for e in range(epochs):
        if not ((e + 1) % every == 0 or e + 1 == epochs):
            continue
        v = val_losses[e]
        validations.append(e)
        if best is None or v < best - min_delta:
            best, best_epoch, bad = v, e, 0
            improvements.append(e)
        else:
            bad += 1
            if patience and bad >= patience:
                stopped = True
                break
    return validations, best, best_epoch, improvements, stopped


@given(val_losses=strat.val_losses, every=strat.every, patience=strat.patience,
       min_delta=strat.min_delta)
def test_validation_best_and_early_stopping(val_losses, every, patience, min_delta):
    """Rules 1, 2, 4, 5: when validation runs, one history row each, the best, the stop."""
    cfg = make_cfg(val_losses, validate_every_n_epochs=every, early_stopping_patience=patience,
                   early_stopping_min_delta=min_delta)
    result = fit(recipe, cfg)
    validations, best, best_epoch, _, stopped = reference(
        val_losses, len(val_losses), every, patience, min_delta)
    h = result.history
    assert h["epoch"] == validations
    assert len({len(v) for v in h.values()}) == 1
    assert all(a < b for a, b in zip(h["epoch"], h["epoch"][1:]))
    assert h["val_loss"] == pytest.approx([val_losses[e] for e in validations])
    assert result.best_epoch == best_epoch
    assert result.best_val_loss == pytest.approx(best)
    assert result.stopped_early == stopped
    assert result.status == ("early_stopped" if stopped else "completed")


@given(val_losses=strat.val_losses, every=strat.every)
def test_plateau_scheduler_steps_once_per_validation_with_its_loss(val_losses, every):
    """Rule 3: a validation-interval scheduler steps once per validation, with that loss."""
    cfg = make_cfg(val_losses, validate_every_n_epochs=every)
    result = fit(recipe, cfg)
    calls = result.state.run.schedule.scheduler.calls
    assert calls == pytest.approx(result.history["val_loss"])
    assert all(c is not None for c in calls)   # never stepped without a metric


@given(n_train=st.integers(1, 13), batch_size=st.integers(1, 5), accum=st.integers(1, 4),
       epochs=st.integers(1, 3), interval=st.sampled_from(["step", "epoch"]))
def test_optimizer_steps_per_epoch_and_step_schedules(n_train, batch_size, accum, epochs,
                                                      interval):
    """Rules 3 and 6: ceil(batches / grad_accum_steps) optimizer steps per epoch; a per-step
    schedule steps once per optimizer step, a per-epoch one once per epoch."""
    cfg = make_cfg([1.0] * epochs, n_train=n_train, batch_size=batch_size,
                   grad_accum_steps=accum, interval=interval)
    per_epoch = []

    def count(optimizer, args, kwargs):
        per_epoch[-1] += 1

    @listens_to(Event.EPOCH_START)
    def hook(event, state):
        if not per_epoch:
            state.run.optimizer.register_step_post_hook(count)
        per_epoch.append(0)

    result = fit(recipe, cfg, callbacks=(hook,))
    batches = math.ceil(n_train / batch_size)
    assert per_epoch == [math.ceil(batches / accum)] * epochs
    assert result.state.step == sum(per_epoch)
    calls = result.state.run.schedule.scheduler.calls
    assert len(calls) == (sum(per_epoch) if interval == "step" else epochs)


@given(clip=st.sampled_from([0.01, 0.1, 1.0, 5.0]), scale=st.sampled_from([0.1, 1.0, 30.0]),
       accum=st.integers(1, 3))
def test_clipped_gradient_norm_reaches_the_optimizer(clip, scale, accum):
    """Rule 7: with clipping on, the total gradient norm the optimizer sees is <= the clip value,
    and grad_norm in the history is the norm before clipping."""
    cfg = make_cfg([1.0, 1.0], gradient_clip_value=clip, scale=scale, grad_accum_steps=accum)
    seen = []

    def norm_before_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    @listens_to(Event.FIT_START)
    def hook(event, state):
        state.run.optimizer.register_step_pre_hook(norm_before_step)

    result = fit(recipe, cfg, callbacks=(hook,))
    assert seen and max(seen) <= clip * (1 + 1e-5)
    fractions = result.history["clipped_fraction"]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    if scale == 30.0 and clip <= 1.0:  # gradients this large are always clipped
        assert fractions == [1.0, 1.0]
        assert all(g > clip for g in result.history["grad_norm"])


@settings(max_examples=8)
@given(val_losses=strat.val_losses, patience=strat.patience)
def test_fit_is_pure_and_runs_do_not_interfere(val_losses, patience):
    """Rule 9: fit never mutates the recipe or the config; two fits in one process don't
    interfere (the same config gives the same weights before and after another run)."""
    cfg = make_cfg(val_losses, early_stopping_patience=patience)
    other = make_cfg([0.5, 0.4], learning_rate=0.05, n_train=6)
    # snapshots taken now (the records are frozen, but a field can be forced or a list inside
    # mutated: compare with copies, not with the same objects)
    cfg_before = copy.deepcopy(attrs.asdict(cfg))
    recipe_before = dict(attrs.asdict(recipe, recurse=False))
    first = fit(recipe, cfg)
    fit(recipe, other)
    again = fit(recipe, cfg)
    assert attrs.asdict(cfg) == cfg_before
    assert attrs.asdict(recipe, recurse=False) == recipe_before
    for key, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[key])
    assert first.history == again.history


@settings(max_examples=10)
@given(val_losses=st.lists(st.sampled_from([0.2, 0.5, 0.9]), min_size=2, max_size=4),
       nan_step=st.integers(0, 15))
def test_nonfinite_loss_fails_and_keeps_earlier_files(tmp_path_factory, val_losses, nan_step):
    """Rule 10: a non-finite loss stops the run naming the epoch and step; best.pt, last.pt and
    model.pt stay as they were before it; metrics.json keeps its history, status failed."""
    run_dir = tmp_path_factory.mktemp("run")
    epochs = len(val_losses)
    cfg = make_cfg(val_losses, nan_at_step=nan_step, n_train=8, batch_size=2,
                   log_every_n_steps=3)
    snapshots: dict = {}

    @listens_to(Event.CHECKPOINT_WRITTEN, Event.VALIDATION_END)
    def snapshot(event, state):
        for name in ("checkpoints/best.pt", "checkpoints/last.pt", "model.pt"):
            path = run_dir / name
            if path.exists():
                snapshots[name] = path.read_bytes()

    result = fit(recipe, cfg, run_dir=run_dir, callbacks=(snapshot,))
    steps_per_epoch = 4
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    if nan_step >= epochs * steps_per_epoch:
        assert result.status == "completed"
        return
    assert result.status == "failed"
    assert result.error["step"] == nan_step
    assert result.error["epoch"] == nan_step // steps_per_epoch
    assert f"step {nan_step + 1}" in result.error["message"]
    assert metrics["status"] == "failed"
    assert metrics["error"]["step"] == nan_step
    assert metrics["history"]["epoch"] == list(range(nan_step // steps_per_epoch))
    for name, data in snapshots.items():
        assert (run_dir / name).read_bytes() == data, name
    assert not list(Path(run_dir).rglob("*.tmp"))


@settings(max_examples=8)
@given(val_losses=strat.val_losses, min_delta=strat.min_delta, every=strat.every)
def test_best_files_are_rewritten_exactly_when_the_best_changes(tmp_path_factory, val_losses,
                                                                min_delta, every):
    """Rule 4 on disk: best.pt and model.pt are written at each new best and only then, and
    hold that validation's weights; metrics.json's best holds its epoch and loss."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_cfg(val_losses, early_stopping_min_delta=min_delta, validate_every_n_epochs=every)
    written, weights_at = [], {}

    @listens_to(Event.CHECKPOINT_WRITTEN, Event.EPOCH_END)
    def watch(event, state):
        if event is Event.CHECKPOINT_WRITTEN and state.checkpoint_path.endswith("best.pt"):
            written.append(state.epoch - 1)
        if event is Event.EPOCH_END:
            weights_at[state.epoch - 1] = {k: v.clone() for k, v in
                                           state.run.model.state_dict().items()}

    result = fit(recipe, cfg, run_dir=run_dir, callbacks=(watch,))
    _, best, best_epoch, improvements, _ = reference(val_losses, len(val_losses), every, 0,
                                                     min_delta)
    assert written == improvements
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"] == {"epoch": best_epoch, "val_loss": best}
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    best_ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    for key, value in weights_at[best_epoch].items():
        assert torch.equal(saved[key], value)
        assert torch.equal(best_ckpt["model"][key], value)
        assert torch.equal(result.model.state_dict()[key], value)
