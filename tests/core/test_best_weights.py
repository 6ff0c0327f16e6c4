"""The best-weights copy equals `model.state_dict()` cloned, whatever path it takes."""

from __future__ import annotations

import cProfile
import pstats

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from engine.core.best_weights import copy_best, plan_weights


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.out = torch.nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight   # one tensor under two keys
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_buffer("absent", None)
        self.stages = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())


class _Extra(torch.nn.Linear):
    def get_extra_state(self):
        return {"calibrated": True}

    def set_extra_state(self, state):
        pass


def _assert_same(copy: dict, model: torch.nn.Module) -> None:
    live = model.state_dict()
    assert list(copy) == list(live)
    for key, value in live.items():
        assert torch.equal(copy[key], value), key
        assert copy[key].data_ptr() != value.data_ptr(), f"{key} is not a copy"
        assert not copy[key].requires_grad, key


def _train_a_little(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    for b in model.buffers():
        if b.is_floating_point():
            b.add_(1.0)


@pytest.mark.parametrize("build", [lambda: torch.nn.Linear(3, 2), _Tied,
                                   lambda: torch.nn.TransformerEncoderLayer(8, 2, 16)])
def test_a_plain_model_gets_a_plan_with_state_dicts_keys(build):
    model = build()
    plan = plan_weights(model)
    assert plan is not None
    assert list(plan.keys) == list(model.state_dict())


@pytest.mark.parametrize("build", [lambda: _Extra(2, 2), lambda: torch.nn.LazyLinear(3)])
def test_a_state_dict_that_is_not_plain_gets_no_plan(build):
    assert plan_weights(build()) is None


def test_a_state_dict_hook_means_no_plan():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model[0]._register_state_dict_hook(lambda *args: None)
    assert plan_weights(model) is None


@settings(max_examples=25, deadline=None)
@given(improvements=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_each_copy_is_the_live_state_dict_and_reuses_the_first_copy(improvements, seed):
    torch.manual_seed(seed)
    model = _Tied()
    plan = plan_weights(model)
    first = best = copy_best(model, None, plan)
    for _ in range(improvements):
        _train_a_little(model)
        best = copy_best(model, best, plan)
        _assert_same(best, model)
    assert best is first   # copied into, not reallocated


def test_a_reassigned_buffer_is_read_where_it_now_lives():
    model = _Tied()
    plan = plan_weights(model)
    best = copy_best(model, None, plan)
    model.norm.running_mean = torch.full((4,), 7.0)   # not in place: a new tensor
    best = copy_best(model, best, plan)
    _assert_same(best, model)


def test_a_changed_shape_or_missing_buffer_falls_back_to_a_fresh_copy():
    model = _Tied()
    plan = plan_weights(model)
    best = copy_best(model, None, plan)
    model.norm.running_mean = torch.zeros(6)
    grown = copy_best(model, best, plan)
    assert grown is not best and grown["norm.running_mean"].shape == (6,)
    model.norm.running_mean = None
    _assert_same(copy_best(model, grown, plan), model)


def test_a_copy_of_weights_from_elsewhere_is_a_fresh_copy_when_keys_differ():
    model = torch.nn.Linear(3, 2)
    foreign = {"weight": torch.zeros(2, 3)}   # e.g. best weights of another model
    best = copy_best(model, foreign, plan_weights(model))
    assert best is not foreign
    _assert_same(best, model)


def test_the_planned_copy_makes_a_few_calls_however_many_modules():
    model = torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(8, 2, 16)
                                  for _ in range(4)])
    plan = plan_weights(model)
    best = copy_best(model, None, plan)
    profile = cProfile.Profile()
    profile.enable()
    copy_best(model, best, plan)
    profile.disable()
    calls = pstats.Stats(profile).total_calls
    slow = cProfile.Profile()
    slow.enable()
    copy_best(model, best, None)
    slow.disable()
    # ~70 modules: state_dict() makes hundreds of calls; the plan a dozen
    assert calls <= 20 < 200 < pstats.Stats(slow).total_calls, calls
