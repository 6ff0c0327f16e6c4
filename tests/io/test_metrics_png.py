"""What metrics.png shows: the run's history, panel by panel, in a PNG that is not blank.

The figure drawn at the end of a real fit is captured when plots.py closes it (its axes, titles
and lines), then compared with the history metrics.json holds; the PNG itself is read back with
matplotlib.image.imread."""

from __future__ import annotations

import json
import math

import resume_recipe as rr

from engine import fit


def test_metrics_png_plots_the_history(tmp_path, monkeypatch):
    """Panels loss (train, validation, best), learning rate, val_mae and gradients, each line's
    points the history's columns against epochs counted from 1; the PNG is 1350 x 612 pixels
    (15 x 6.8 inches at 90 dpi) with ink on it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    drawn = []
    real_close = plt.close

    def capture(fig=None):
        if fig is not None and hasattr(fig, "axes"):
            drawn.append({ax.get_title(): {line.get_label(): (list(line.get_xdata()),
                                                              list(line.get_ydata()))
                                           for line in ax.get_lines()}
                          for ax in fig.axes if ax.get_title()})
        return real_close(fig)

    monkeypatch.setattr(plt, "close", capture)
    # drawn in this process, where the figure can be seen (the plot helper process draws the
    # same plot_metrics; tests/io/test_plot_service.py checks it is sent this history)
    monkeypatch.setenv("ENGINE_PLOTS", "inline")
    run = tmp_path / "run"
    result = fit(rr.recipe, rr.make_cfg("train.epochs=4", "train.learning_rate=0.1",
                                        "train.lr_patience=0"), run_dir=run)
    assert result.status == "completed"
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["history"]
    epochs = [e + 1 for e in history["epoch"]]
    assert drawn, "no figure was drawn"
    panels = drawn[-1]
    assert set(panels) == {"loss", "learning rate", "val_mae", "gradients"}, set(panels)

    def same(line, column):
        xs, ys = line
        assert list(xs) == epochs
        assert all(math.isclose(y, v, rel_tol=1e-12) for y, v in zip(ys, history[column],
                                                                      strict=True)), column

    same(panels["loss"]["train"], "train_loss")
    same(panels["loss"]["validation"], "val_loss")
    best_x, _ = panels["loss"]["best"]
    assert set(best_x) == {metrics["best"]["epoch"] + 1}
    same(panels["learning rate"][next(iter(panels["learning rate"]))], "learning_rate")
    assert len(set(history["learning_rate"])) > 1   # the plateau cut the rate: a real line
    same(panels["val_mae"]["model"], "val_mae")
    same(panels["gradients"]["grad_norm"], "grad_norm")

    image = matplotlib.image.imread(run / "metrics.png")
    assert image.shape[:2] == (612, 1350), image.shape
    ink = (image[..., :3].mean(axis=2) < 0.9).mean()
    assert ink > 0.02, ink    # lines, labels and ticks, not a blank canvas
