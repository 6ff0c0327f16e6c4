"""The batches an epoch trains on: the epoch's iterator (a resumed epoch's replay), and the
run's start, where the first batch the loop draws is checked before FIT_START."""

from __future__ import annotations

import itertools
from typing import Any

from engine.core import distributed, rng
from engine.core.events import Event, emit
from engine.core.failures import StoppedBeforeStart
from engine.core.preflight import draw_first_batch
from engine.core.state import LoopState, Run


def epoch_batches(run: Run, state: LoopState, resume_rng: Any) -> Any:
    """The epoch's batch iterator; a run resumed mid-epoch replays the epoch's data order from
    the RNG state at its start, skips the batches already trained, then restores the RNG."""
    loader = run.loaders.train
    distributed.set_epoch(loader, state.epoch)
    run.train_model.train()
    if resume_rng is None:
        return iter(loader)
    rng.set_rng_state(state.epoch_rng)
    batches = iter(loader)
    for _ in range(state.batch):
        next(batches)
    rng.set_rng_state(resume_rng)
    return batches


def start_run(w: Any, state: LoopState, batches: Any) -> Any:
    """The run's start: the first batch this process draws goes to `before_start` (the
    first-batch check; the run directory), then FIT_START. The RNG is put back after both,
    so neither shifts the run: a resumed run and one left alone draw the same numbers."""
    if w.stop.count:
        raise StoppedBeforeStart("stopped by a signal before the first step", state)
    # a resume whose last.pt was written at an epoch's last step has no batch left to draw
    draw = batches is not None and state.batch < w.settings.n_batches
    first = draw_first_batch(w.run.recipe, batches) if draw else None
    saved = rng.rng_state()   # after the draw: the loop itself would have drawn it here
    if w.before_start is not None:
        w.before_start(first)
    emit(w.table, Event.FIT_START, state)
    rng.set_rng_state(saved)
    # the loop trains on the batch it checked: no extra pass over the loader
    return itertools.chain((first,), batches) if draw else batches
