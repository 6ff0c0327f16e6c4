"""Gradient accumulation: k micro-batches of size b make the same update as one batch of k*b."""

from __future__ import annotations

import pytest
import torch

from engine import Event, TrainConfig, fit
from engine.core.events import listens_to
from tests.ddp_recipe import Probe, ProbeConfig, recipe


def final_run(n_train: int, batch_size: int, accum: int, epochs: int = 2, clip: float = 0.0):
    """Train the probe recipe; return (weights at the end, steps taken, result)."""
    seen = {}

    @listens_to(Event.FIT_END)
    def capture(event, state):
        seen["weights"] = {k: v.clone() for k, v in state.run.model.state_dict().items()}
        seen["steps"] = state.step

    cfg = ProbeConfig(train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=1e-2,
                                        grad_accum_steps=accum, gradient_clip_value=clip,
                                        device="cpu"),
                      probe=Probe(n_train=n_train, n_val=8))
    result = fit(recipe, cfg, callbacks=(capture,))
    return seen["weights"], seen["steps"], result


@pytest.mark.parametrize(("n_train", "b", "k"), [
    (48, 4, 3),    # 12 batches: four full groups
    (40, 4, 3),    # 10 batches: groups of 3, 3, 3 and a last partial group of 1
    (56, 8, 2),    # 7 batches: a last partial group of 1
    (30, 5, 4),    # 6 batches: groups of 4 and 2
])
def test_accumulating_k_batches_equals_one_large_batch(n_train, b, k):
    """Weights after accumulating k batches of b equal those of batches of k*b, including a last
    partial group; steps per epoch = ceil(batches / k); same history length."""
    small, small_steps, small_result = final_run(n_train, b, k)
    large, large_steps, large_result = final_run(n_train, b * k, 1)
    batches = -(-n_train // b)
    assert small_steps == large_steps == 2 * -(-batches // k)
    for key in large:
        torch.testing.assert_close(small[key], large[key], rtol=1e-5, atol=1e-6)
    assert small_result.history["epoch"] == large_result.history["epoch"] == [0, 1]
    torch.testing.assert_close(torch.tensor(small_result.history["val_loss"]),
                               torch.tensor(large_result.history["val_loss"]))


def test_accumulation_with_clipping_clips_the_summed_gradient():
    """With clipping, the accumulated gradient (not each micro-batch's) is clipped: the result
    equals the large-batch run with the same clip value."""
    small, _, _ = final_run(40, 4, 2, clip=0.05)
    large, _, _ = final_run(40, 8, 1, clip=0.05)
    for key in large:
        torch.testing.assert_close(small[key], large[key], rtol=1e-5, atol=1e-6)


def test_no_accumulation_differs_from_large_batch():
    """The comparison above can fail: without accumulation, batches of b give other weights."""
    small, _, _ = final_run(48, 4, 1)
    large, _, _ = final_run(48, 12, 1)
    assert any(not torch.allclose(small[k], large[k], rtol=1e-5, atol=1e-6) for k in large)
