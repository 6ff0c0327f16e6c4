"""The figures the loop keeps on the device between host syncs.

Per step the loop appends the detached loss and the gradient norm (tensors, no sync); at log
intervals, checkpoints and epoch ends `read` moves the window to the host in one transfer, adds
it to the epoch's totals, and acts on what it shows: a non-finite loss fails the run, a stop
request stops it. Under torchrun the flags and loss sums travel in one collective, so every rank
decides the same.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.core import distributed
from engine.core.failures import StopRequested, TrainingFailed
from engine.core.state import EpochTotals, LoopState, evolve


class FigureWindow:
    """The losses (one per batch) and gradient norms (one per optimizer step) since the last
    read, as device tensors. Two lists reused for the whole run: nothing is allocated per
    step beyond the tensors the step makes."""

    __slots__ = ("losses", "norms", "world", "device", "clip", "accum")

    def __init__(self, world: Any, device: torch.device, clip: float, accum: int) -> None:
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.world, self.device, self.clip, self.accum = world, device, clip, accum

    def clear(self) -> None:
        """Empty the window (after a read, and at each epoch's start)."""
        self.losses.clear()
        self.norms.clear()

    def read(self, state: LoopState, stop: Any, step: int, batch: int,
             epoch_end: bool = False) -> LoopState:
        """The state at `step` and `batch` (one record made, not two) with the window's
        figures added to its totals; raises TrainingFailed on a non-finite loss and
        StopRequested on a stop signal (not at an epoch's end, where the loop decides after
        the epoch's checkpoint)."""
        losses = torch.stack(self.losses).tolist() if self.losses else []   # the host sync
        norms = torch.stack(self.norms).float().tolist() if self.norms else []
        first = step - len(norms)
        self.clear()
        t = state.totals
        window_sum = sum(losses)
        bad_at = None   # a sum is finite only if every term is: one call, not one per step
        if not math.isfinite(window_sum):
            bad_at = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        loss_sum = t.loss_sum
        for value in losses:   # in step order, so a resumed epoch sums to the same float
            loss_sum += value
        norm_sum, clipped = t.norm_sum, t.clipped
        for value in norms:
            norm_sum += value
            clipped += self.clip > 0 and value > self.clip
        n_losses = len(losses)
        recent = window_sum / n_losses if n_losses else state.recent_loss
        flags = distributed.all_sum([float(bad_at is not None),
                                     float(stop.count > 0 and not epoch_end),
                                     window_sum, float(n_losses)], self.world, self.device)
        if self.world.active:
            # every rank records the mean over all ranks' batches: the window's losses are
            # summed in the same collective as the flags
            loss_sum, n_losses = t.loss_sum + flags[2], int(flags[3])
            recent = flags[2] / flags[3] if flags[3] else state.recent_loss
        # made whole, not evolved: attrs.evolve reads every field with a call of its own
        totals = EpochTotals(lr=t.lr, loss_sum=loss_sum, losses=t.losses + n_losses,
                             norm_sum=norm_sum, norms=t.norms + len(norms), clipped=clipped,
                             nonfinite=t.nonfinite)
        state = evolve(state, totals=totals, recent_loss=recent, step=step, batch=batch)
        if flags[0]:
            at = first + (bad_at // self.accum if bad_at is not None else 0)
            raise TrainingFailed(f"non-finite training loss at epoch {state.epoch + 1}, step "
                                 f"{at + 1}", state, state.epoch, at)
        if flags[1]:
            raise StopRequested("stopped by a signal", state)
        return state
