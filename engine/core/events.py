"""The closed set of events a callback can observe, and how they reach their listeners.

A callback is any callable ``(event, state) -> None``. It observes; it never changes the run.
It may say which events it wants with an ``events`` attribute (a set of `Event`); without one it
receives all of them. The loop dispatches an event only to its listeners, so an event nobody
listens to (above all `Event.STEP_END`) costs nothing per step::

    @listens_to(Event.VALIDATION_END)
    def report(event, state):
        print(state.epoch, state.history["val_loss"][-1])
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any


class Event(enum.Enum):
    """What a callback can observe, in the order a run sends them. `state` is the
    `engine.core.state.LoopState` at that moment (epochs and steps count from 0):

    - FIT_START: once, before the first epoch (a resumed run: at the resume point).
    - EPOCH_START: before each epoch's first batch; `state.epoch` is that epoch.
    - STEP_END: after each optimizer step; `state.step` counts steps taken. `recent_loss` is
      the mean loss of the last log interval (read at intervals, never per step).
    - CHECKPOINT_WRITTEN: after each checkpoint file; `state.checkpoint_path` names it.
    - VALIDATION_END: after each validation's decisions and checkpoints; the history's last
      row is that validation, `state.improved` says whether it is the new best.
    - EPOCH_END: after each epoch; `state.epoch` is the number of epochs done.
    - FAILURE: the run failed; `state.error` holds epoch, step and message.
    - FIT_END: once, last; `state.status` is the final status.
    """

    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    STEP_END = "step_end"
    EPOCH_END = "epoch_end"
    VALIDATION_END = "validation_end"
    CHECKPOINT_WRITTEN = "checkpoint_written"
    FIT_END = "fit_end"
    FAILURE = "failure"

    # members are singletons: the identity hash (C) finds them in the listener table without
    # Enum's Python-level __hash__ (a call per lookup, a few per epoch)
    __hash__ = object.__hash__


def listens_to(*events: Event) -> Callable[[Callable], Callable]:
    """Mark a callback function with the events it wants (others are never sent to it)."""
    for event in events:
        if not isinstance(event, Event):
            raise TypeError(f"listens_to takes Event members, got {event!r}")

    def mark(fn: Callable) -> Callable:
        fn.events = frozenset(events)
        return fn

    return mark


def events_of(callback: Callable) -> frozenset[Event]:
    """The events `callback` listens to; all of them when it does not say."""
    wanted = getattr(callback, "events", None)
    if wanted is None:
        return frozenset(Event)
    wanted = frozenset(wanted)
    unknown = [e for e in wanted if not isinstance(e, Event)]
    if unknown:
        raise TypeError(f"callback {callback!r} lists {unknown!r}, which are not Event members")
    return wanted


def listeners(callbacks: Iterable[Callable]) -> dict[Event, tuple[Callable, ...]]:
    """Each event with the callbacks that want it, in registration order."""
    callbacks = tuple(callbacks)
    table = {event: [] for event in Event}
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callback {cb!r} is not callable")
        for event in events_of(cb):
            table[event].append(cb)
    return {event: tuple(cbs) for event, cbs in table.items()}


def emit(table: dict, event: Event, state: Any) -> None:
    """Send `event` to its listeners (a table from `listeners`)."""
    for cb in table[event]:
        cb(event, state)


def emit_quietly(table: dict, event: Event, state: Any) -> None:
    """On the way out of a failure: a failing observer must not hide the first error."""
    for cb in table[event]:
        try:
            cb(event, state)
        except Exception:
            pass


def emit_counted(table: dict, event: Event, ending: list) -> None:
    """`emit` of `ending = [state, observers done]`, counting each observer done in
    `ending[1]`, so that a second signal (KeyboardInterrupt), which can land on any line (even
    this function's entry, before any `try` of its own), lets the caller finish the rest with
    `emit_rest_quietly`. The counting list is made by the caller inside its own `try`."""
    state = ending[0]
    for callback in table[event][ending[1]:]:
        callback(event, state)
        ending[1] += 1


def emit_rest_quietly(table: dict, event: Event, ending: list) -> None:
    """The observers `emit_counted` had not finished (the one it was in too: it may not have
    written), each allowed to fail: metrics.json and the log get their last word."""
    for callback in table[event][ending[1]:]:
        try:
            callback(event, ending[0])
        except Exception:
            pass
