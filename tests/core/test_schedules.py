"""The optimizer and schedule builders: exact learning-rate curves and parameter groups."""

from __future__ import annotations

import io
import math

import attrs
import pytest
import torch

from engine.core import optimizers, schedules
from engine.core.config import TrainConfig
from engine.core.errors import UserError


@attrs.frozen
class Cfg:
    train: TrainConfig = attrs.Factory(TrainConfig)


def make(**train) -> Cfg:
    return Cfg(TrainConfig(**train))


def lrs_per_step(cfg: Cfg, steps_per_epoch: int, n: int) -> list[float]:
    """The rate each of the first n optimizer steps uses, stepping as the loop does."""
    model = torch.nn.Linear(2, 1)
    optimizer = optimizers.adamw(cfg, model)
    schedule = schedules.warmup_cosine(cfg, optimizer, steps_per_epoch=steps_per_epoch)
    assert schedule.interval == "step"
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.scheduler.step()
    return out


def test_warmup_is_linear_then_cosine_reaches_min_lr_at_the_last_step():
    """warmup: (s+1)/(W+1) of the rate; full rate at step W; cosine midpoint; min_lr at the end."""
    cfg = make(learning_rate=1.0, warmup_steps=4, min_lr=0.1, epochs=3)
    lrs = lrs_per_step(cfg, steps_per_epoch=5, n=17)  # total 15 steps, two past the end
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # cosine over steps 4..14: midpoint at step 9 is halfway between 1.0 and 0.1
    assert lrs[9] == pytest.approx(0.55)
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lrs[14] == pytest.approx(0.1)          # the last optimizer step
    assert lrs[15:] == pytest.approx([0.1, 0.1])  # stays there if training runs longer
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_warmup_cosine_without_warmup_starts_at_the_full_rate():
    """warmup_steps 0: step 0 at the base rate, min_lr 0 reached at the last step."""
    lrs = lrs_per_step(make(learning_rate=0.5, warmup_steps=0, epochs=1), 9, 9)
    assert lrs[0] == pytest.approx(0.5)
    assert lrs[4] == pytest.approx(0.25)
    assert lrs[8] == pytest.approx(0.0)


def test_warmup_cosine_state_dict_loads_with_weights_only_and_resumes_the_curve():
    """LambdaLR over a plain function: the checkpointed state holds only numbers."""
    cfg = make(learning_rate=1.0, warmup_steps=2, epochs=2)
    model = torch.nn.Linear(2, 1)
    optimizer = optimizers.adamw(cfg, model)
    schedule = schedules.warmup_cosine(cfg, optimizer, steps_per_epoch=4)
    for _ in range(3):
        optimizer.step()
        schedule.scheduler.step()
    buffer = io.BytesIO()
    torch.save(schedule.scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    again = optimizers.adamw(cfg, torch.nn.Linear(2, 1))
    restored = schedules.warmup_cosine(cfg, again, steps_per_epoch=4).scheduler
    restored.load_state_dict(state)
    assert restored.get_last_lr() == pytest.approx(schedule.scheduler.get_last_lr())


def test_warmup_cosine_refuses_min_lr_above_the_rate():
    """min_lr above learning_rate would make the 'decay' rise: a user error."""
    cfg = make(learning_rate=1e-3, min_lr=1e-2)
    optimizer = optimizers.adamw(cfg, torch.nn.Linear(2, 1))
    with pytest.raises(UserError, match="min_lr"):
        schedules.warmup_cosine(cfg, optimizer, steps_per_epoch=3)


def test_step_decay_multiplies_by_gamma_at_epoch_boundaries():
    """StepLR per epoch: the rate of epoch e is lr * gamma ** (e // step_size)."""
    cfg = make(learning_rate=0.1, step_size=2, gamma=0.5, momentum=0.9)
    model = torch.nn.Linear(2, 1)
    optimizer = optimizers.sgd_nesterov(cfg, model)
    schedule = schedules.step_decay(cfg, optimizer)
    assert schedule.interval == "epoch"
    per_epoch = []
    for _ in range(6):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.scheduler.step()
    assert per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_sgd_nesterov_settings_and_zero_momentum_refused():
    """SGD with Nesterov momentum and weight decay from train; momentum 0 is a user error."""
    cfg = make(learning_rate=0.2, momentum=0.8, weight_decay=1e-4)
    group = optimizers.sgd_nesterov(cfg, torch.nn.Linear(2, 1)).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        0.2, 0.8, True, 1e-4)
    with pytest.raises(UserError, match="momentum"):
        optimizers.sgd_nesterov(make(momentum=0.0), torch.nn.Linear(2, 1))


def test_adamw_does_not_decay_biases_or_norm_parameters():
    """Weights (dim >= 2) decay; biases, LayerNorm/BatchNorm parameters don't; shared once."""
    embed = torch.nn.Embedding(5, 4)
    model = torch.nn.Sequential(embed, torch.nn.LayerNorm(4), torch.nn.Linear(4, 3),
                                torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 5))
    model[4].weight = torch.nn.Parameter(torch.randn(5, 3))
    model.add_module("tied", torch.nn.ModuleList([embed]))  # a shared module appears once
    model[2].bias.requires_grad_(False)  # frozen parameters are left out
    cfg = make(learning_rate=1e-3, weight_decay=0.05)
    optimizer = optimizers.adamw(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert ids(decay) == {id(embed.weight), id(model[2].weight), id(model[4].weight)}
    assert ids(no_decay) == {id(model[1].weight), id(model[1].bias), id(model[3].weight),
                             id(model[3].bias), id(model[4].bias)}
    assert len(decay["params"]) + len(no_decay["params"]) == len(
        [p for p in model.parameters() if p.requires_grad])


def test_adamw_on_a_model_without_biases_has_one_group():
    """An empty group is left out rather than passed to torch."""
    model = torch.nn.Linear(3, 2, bias=False)
    optimizer = optimizers.adamw(make(weight_decay=0.1), model)
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
