"""The step functions compose by hand into the same loop `fit` runs."""

from __future__ import annotations

import math

import pytest
import torch

import steps
from engine import StepContext, fit
from engine.io.layering import build_config, parse_set
from recipes.autoencoder import recipe


def test_hand_composed_loop_gets_the_weights_of_fit():
    cfg = build_config(recipe.config, [parse_set("train.epochs=2"),
                                       parse_set("data.num_models=256"),
                                       parse_set("train.gradient_clip_value=0.05")])
    result = fit(recipe, cfg)

    # the same thing, written with steps/: seed, build, train, validate, keep the best
    torch.manual_seed(cfg.train.seed)
    import random
    random.seed(cfg.train.seed)
    model = recipe.build_model(cfg)
    loaders = recipe.build_loaders(cfg)
    optimizer = recipe.build_optimizer(cfg, model)
    schedule = recipe.build_scheduler(cfg, optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = torch.device("cpu")
    best, best_weights = math.inf, None
    for epoch in range(cfg.train.epochs):
        model.train()
        for batch in loaders.train:
            ctx = StepContext(device, True, epoch, 0)
            loss, _ = steps.split_output(recipe.forward_batch(model, batch, ctx))
            steps.backward(loss)
            steps.optimizer_step(optimizer, params, cfg.train.gradient_clip_value)
        model.eval()
        total, n = 0.0, 0
        for batch in loaders.val:
            loss, _ = steps.eval_step(model, batch, recipe.forward_batch,
                                      StepContext(device, False, epoch, 0))
            total += loss.item() * steps.batch_size_of(batch)
            n += steps.batch_size_of(batch)
        schedule.scheduler.step(total / n)
        if total / n < best:
            best = total / n
            best_weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert result.best_val_loss == pytest.approx(best, rel=1e-6)  # float32 sums on device
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best_weights[key]), key


def test_train_step_alone_learns():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 4)
    y = x.sum(1, keepdim=True)

    def forward_batch(model, batch, ctx):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    ctx = StepContext(torch.device("cpu"), True, 0, 0)
    losses = [steps.train_step(model, (x, y), forward_batch, ctx, optimizer, clip=1.0).item()
              for _ in range(50)]
    assert losses[-1] < losses[0] / 10


def test_move_to_device_keeps_structure():
    """Every tensor inside dicts, lists and attrs records reaches the device (meta: a real move
    off the CPU), the containers' shape and the non-tensors stay."""
    import attrs

    @attrs.frozen
    class Pair:
        a: torch.Tensor
        b: list

    batch = {"x": torch.ones(2), "pair": Pair(torch.zeros(1), [torch.ones(3), 5]), "t": (1, "s")}
    moved = steps.move_to_device(batch, torch.device("meta"))
    assert moved["pair"].b[1] == 5 and moved["t"] == (1, "s")
    assert isinstance(moved["pair"], Pair) and isinstance(moved["pair"].b, list)
    assert [(p, t.device.type, tuple(t.shape)) for p, t in steps.iter_tensors(moved)] == [
        ("batch['x']", "meta", (2,)), ("batch['pair'].a", "meta", (1,)),
        ("batch['pair'].b[0]", "meta", (3,))]
    assert batch["x"].device.type == "cpu"   # the loader's batch is left as it was
    assert steps.batch_size_of(batch) == 2
    assert [p for p, _ in steps.iter_tensors(batch)] == [
        "batch['x']", "batch['pair'].a", "batch['pair'].b[0]"]


def test_eval_step_runs_under_inference_mode_unless_asked_not_to():
    """Validation makes no autograd bookkeeping at all (inference tensors); inference=False
    gives ordinary tensors made under no_grad."""
    import torch as t

    model = t.nn.Linear(3, 1)
    seen = []

    def forward(m, batch, ctx):
        seen.append((t.is_inference_mode_enabled(), t.is_grad_enabled()))
        return t.nn.functional.mse_loss(m(batch), t.zeros(len(batch), 1))

    loss, _ = steps.eval_step(model, t.randn(4, 3), forward, None)
    assert seen[-1] == (True, False) and loss.is_inference()
    loss, _ = steps.eval_step(model, t.randn(4, 3), forward, None, inference=False)
    assert seen[-1] == (False, False) and not loss.is_inference()
    assert (t.is_inference_mode_enabled(), t.is_grad_enabled()) == (False, True)


def test_eval_step_leaves_inference_mode_and_autocast_off_after_a_failing_batch():
    """The guards are torch's own C++ objects (on from their creation): a forward_batch that
    raises leaves neither inference mode nor autocast on for the training that follows."""
    import torch as t

    def failing(m, batch, ctx):
        assert t.is_inference_mode_enabled() and t.is_autocast_enabled("cpu")
        raise ValueError("bad batch")

    cast = steps.autocast(t.device("cpu"), "bf16")
    for _ in range(2):   # the autocast context is reused, as the loop reuses it
        with pytest.raises(ValueError, match="bad batch"):
            steps.eval_step(t.nn.Linear(3, 1), t.randn(4, 3), failing, None, cast)
        assert not t.is_inference_mode_enabled() and not t.is_autocast_enabled("cpu")
        assert t.is_grad_enabled() and not t.ones(1).is_inference()
