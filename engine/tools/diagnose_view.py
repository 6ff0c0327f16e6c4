"""What `engine diagnose` reads a run as: the thresholds of its rules, a `Finding`, and the
history as numbers (`View`), with the small measures the rules share."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

SEVERITIES = ("error", "warning", "info")

# --- thresholds ------------------------------------------------------------------------------
# Tuned so that normal runs (the recipes' default configs, and the well-set runs of
# tests/test_diagnose.py) read `healthy`; all but GRAD_ZERO are ratios, so they hold whatever
# the loss scale.
RISE_FROM_START = 0.10     # diverging: last train loss above the first by more than 10%
GIVE_BACK = 0.50           # diverging: train loss gave back more than half of its progress...
GIVE_BACK_OF_MIN = 0.50    # ...and sits more than 50% above its minimum (not noise near zero)
FLAT = 0.01                # not-learning: train (and val) loss improved by under 1% in total
FLAT_MIN_VALIDATIONS = 3   # fewer cannot tell a flat run from one that converged in epoch 1
GRAD_ZERO = 1e-8           # not-learning: every mean gradient norm below this
OVERFIT_RISE = 0.05        # overfitting: val loss ends >5% above its minimum...
OVERFIT_OF_FIRST = 0.01    # ...and by >1% of its first value (jitter near zero is no trend)...
OVERFIT_MIN_AFTER = 3      # ...after at least 3 validations past it (one spike is noise)
GAP = 0.05                 # overfitting needs train loss >5% below val loss at the end
FIRST_SPIKE = 50.0         # diverging (warning): epoch 1's train loss 50x the val loss after it
JUMP = 2.0                 # diverging (warning): val loss more than doubles between validations
BURST = 10.0               # diverging: a later epoch's train loss 10x every val loss so far
CLIPPED_MOST = 0.50        # clipping-always: over half of all steps clipped
PLATEAU_MIN = 5            # plateau: at least this many validations without improvement, and
                           # at least twice (lr_patience + 1), so the scheduler had its chance
LR_EPS = 1e-6              # relative change below which the learning rate counts as unchanged

_NONFINITE = re.compile(r"non-?finite|\bnan\b|\binf(inity)?\b|overflow", re.IGNORECASE)


@attrs.frozen
class Finding:
    """One diagnosis: a stable `code`, its `severity`, the `evidence` (epochs and values) and
    the `advice` (what to try)."""

    code: str
    severity: str = attrs.field(validator=attrs.validators.in_(SEVERITIES))
    evidence: str
    advice: str


# --- the history as numbers ------------------------------------------------------------------

def num(value: Any) -> float | None:
    """A finite float, or None for null, NaN and inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@attrs.frozen
class View:
    """The history as finite floats (None where non-finite), with 1-based epoch labels."""

    cols: Mapping[str, tuple]
    epochs: tuple           # display label of each validation (history epoch + 1)
    status: str
    error: Mapping | None

    @property
    def n(self) -> int:
        """The number of validations."""
        return len(self.epochs)

    def col(self, name: str) -> tuple:
        """A history column as finite floats or None, one per validation."""
        return self.cols.get(name, (None,) * self.n)

    def finite(self, name: str) -> list[tuple[int, float]]:
        """(index, value) of a column's finite values."""
        return [(i, x) for i, x in enumerate(self.col(name)) if x is not None]


def view_of(metrics: Mapping) -> View:
    """A metrics.json dict as a View (missing or torn columns padded with None)."""
    history = metrics.get("history") or {}
    n = max((len(v) for v in history.values()), default=0)
    cols = {k: tuple(num(x) for x in v) for k, v in history.items()}
    raw_epochs = list(history.get("epoch") or [])
    epochs = tuple(int(e) + 1 if num(e) is not None else i + 1
                   for i, e in enumerate(raw_epochs + [None] * (n - len(raw_epochs))))
    error = metrics.get("error")
    return View(cols, epochs, str(metrics.get("status", "unknown")),
                 error if isinstance(error, Mapping) else None)


def g(x: float | None) -> str:
    """A figure for a message: 4 significant digits, or 'n/a'."""
    return "non-finite" if x is None else f"{x:.4g}"


def rel_drop(first: float, low: float) -> float:
    """How much of `first` the loss lost on its way to `low`, as a fraction."""
    return (first - low) / max(abs(first), 1e-12)


def lr_reduced(v: View) -> tuple[bool, str]:
    """Whether the rate ever fell below an earlier rate, and a phrase saying so."""
    lrs = [x for _, x in v.finite("learning_rate")]
    if not lrs:
        return False, "learning rate not recorded"
    for i in range(1, len(lrs)):
        if lrs[i] < max(lrs[:i]) * (1 - LR_EPS):
            return True, f"learning rate already reduced ({g(max(lrs))} -> {g(lrs[-1])})"
    return False, f"learning rate never reduced ({g(lrs[0])} throughout)"


def best_of(v: View) -> tuple[int, float] | None:
    """(index, val_loss) of the best validation, or None."""
    vals = v.finite("val_loss")
    # the first of the lowest, as the loop picks the best validation with min_delta 0
    return min(vals, key=lambda p: p[1]) if vals else None


# --- the rules -------------------------------------------------------------------------------


def error_where(error: Mapping) -> str:
    """" at epoch E, step S" (from 1), unless the message already says where."""
    if "epoch" in str(error.get("message", "")):
        return ""
    parts = []
    if num(error.get("epoch")) is not None:
        parts.append(f"epoch {int(error['epoch']) + 1}")
    if num(error.get("step")) is not None:
        parts.append(f"step {int(error['step']) + 1}")
    return " at " + ", ".join(parts) if parts else ""
