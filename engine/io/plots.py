"""metrics.png: loss curves, learning rate and the recipe's metrics, by epoch.

A metric with a baseline in metrics.json (`"baselines": {"random": {"ndcg_at_5": ...}}`) gets
each baseline as a flat dashed line, so a curve can be read against what it has to beat.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.io.files import atomic_write_bytes

SKIP = {"epoch", "train_loss", "val_loss", "learning_rate"}


def _finite(values: list) -> list:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def plot_metrics(path: str | Path, metrics: Mapping[str, Any], title: str = "") -> None:
    """Draw the history of a metrics.json dict into `path` (PNG, written atomically)."""
    atomic_write_bytes(path, render_png(metrics, title))


def warm_up() -> None:
    """Draw a figure and throw it away: the first figure of a process loads fonts and caches
    (about 0.6 s here), which the plot helper pays while the run trains, not at its end."""
    render_png({"history": {"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_loss": [1.0, 0.6],
                            "learning_rate": [1e-3, 1e-3], "val_metric": [0.1, 0.2]},
                "best": {"epoch": 1, "val_loss": 0.6}}, "warm-up")


def render_png(metrics: Mapping[str, Any], title: str = "") -> bytes:
    """The figure of a metrics.json dict, as PNG bytes."""

    import matplotlib  # deferred: start-up time
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: start-up time

    history = metrics.get("history", {})
    epochs = [e + 1 for e in history.get("epoch", [])]   # people read epochs from 1
    extra = [k for k in history if k not in SKIP and k.startswith("val_")]
    diagnostics = [k for k in ("grad_norm", "clipped_fraction") if k in history]
    panels = 2 + len(extra) + (1 if diagnostics else 0)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    axes = [ax for row in axes for ax in row]

    ax = axes[0]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        if key in history:
            ax.plot(epochs, _finite(history[key]), marker="o", ms=3, label=label)
    best = metrics.get("best", {}) or {}
    if best.get("epoch") is not None:
        ax.axvline(best["epoch"] + 1, color="grey", ls=":", lw=1, label="best")
    ax.set_title("loss")
    ax.legend()

    ax = axes[1]
    if "learning_rate" in history:
        ax.plot(epochs, _finite(history["learning_rate"]), marker="o", ms=3, color="tab:green")
        positive = [v for v in _finite(history["learning_rate"]) if v > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
    ax.set_title("learning rate")

    _metric_panels(axes, history, epochs, extra, diagnostics, metrics.get("baselines") or {})
    _finish(fig, axes, panels, cols, rows, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _metric_panels(axes: list, history: Mapping, epochs: list, extra: list, diagnostics: list,
                   baselines: Mapping) -> None:
    """One panel per recipe metric (with its baselines) and one for the gradient figures."""
    for ax, key in zip(axes[2:], extra):
        ax.plot(epochs, _finite(history[key]), marker="o", ms=3, label="model")
        name = key[len("val_"):]
        for i, (baseline, figures) in enumerate(sorted(baselines.items())):
            if isinstance(figures, Mapping) and isinstance(figures.get(name), (int, float)):
                ax.axhline(figures[name], ls="--", lw=1, color=f"C{i + 1}", label=baseline)
        ax.set_title(key)
        if baselines:
            ax.legend(fontsize="small")
    if diagnostics:
        ax = axes[2 + len(extra)]
        for key in diagnostics:
            ax.plot(epochs, _finite(history[key]), marker="o", ms=3, label=key)
        ax.set_title("gradients")
        ax.legend(fontsize="small")


def _finish(fig: Any, axes: list, panels: int, cols: int, rows: int, title: str) -> None:
    from matplotlib.ticker import MaxNLocator  # deferred: start-up time

    for ax in axes[:panels]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        # few, whole-epoch ticks: each tick is a costly artist to build and draw
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    for ax in axes[panels:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout measured every label and cost more than drawing (0.18 s)
    height = 3.4 * rows   # inches: margins in inches keep titles clear of the axes
    fig.subplots_adjust(left=0.06 if cols == 3 else 0.1, right=0.98, bottom=0.55 / height,
                        top=1 - (0.75 if title else 0.4) / height, wspace=0.28, hspace=0.45)
