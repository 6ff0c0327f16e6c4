"""metrics.png is drawn by a helper process: the final frame is on disk after wait_for_plots,
shows the run's history, and is drawn here when the helper is gone."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from engine.io import plot_service


def _metrics(n: int) -> dict:
    return {"history": {"epoch": list(range(n)), "train_loss": [1.0 / (i + 1) for i in range(n)],
                        "val_loss": [1.2 / (i + 1) for i in range(n)],
                        "learning_rate": [1e-3] * n}, "best": {"epoch": n - 1}}


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_final_frames_are_drawn_by_the_helper_and_waited_for(tmp_path: Path, monkeypatch):
    """Many frames for two files: after wait(), each file holds its last frame (the helper
    drew it: no matplotlib in this process) and nothing is pending."""
    monkeypatch.delenv("ENGINE_PLOTS", raising=False)
    service = plot_service.PlotService()
    for n in range(1, 6):
        for name in ("a.png", "b.png"):
            service.submit(tmp_path / name, _metrics(n), name, final=n == 5)
    service.wait(timeout=120)
    assert _is_png(tmp_path / "a.png") and _is_png(tmp_path / "b.png")
    assert service._proc is not None and service._pending == {}
    service.close()


@pytest.mark.slow
def test_a_dead_helper_leaves_no_plot_missing(tmp_path: Path, monkeypatch):
    """Kill the helper before the final frame: wait() draws it in this process."""
    monkeypatch.delenv("ENGINE_PLOTS", raising=False)
    service = plot_service.PlotService()
    service.submit(tmp_path / "warm.png", _metrics(2), "warm", final=True)
    service.wait(timeout=120)
    os.kill(service._proc.pid, signal.SIGKILL)
    service._proc.wait()
    service.submit(tmp_path / "final.png", _metrics(3), "final", final=True)
    service.wait(timeout=60)
    assert _is_png(tmp_path / "final.png")


def _tiny_fit(tmp_path: Path, monkeypatch, epochs: int = 3) -> tuple[list, object]:
    """A fit with a run directory whose plot submissions are recorded, not drawn."""
    import attrs
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from engine import Loaders, Recipe, TrainConfig, fit

    @attrs.frozen
    class Cfg:
        train: TrainConfig = TrainConfig(epochs=epochs, batch_size=8, device="cpu")

    sent = []
    monkeypatch.setattr(plot_service.PlotService, "submit",
                        lambda self, path, metrics, title, final: sent.append((metrics, final)))
    x = torch.randn(32, 3)
    recipe = Recipe(name="p", config=Cfg, build_model=lambda c: torch.nn.Linear(3, 3),
                    build_loaders=lambda c: Loaders(DataLoader(TensorDataset(x, x), 8),
                                                    DataLoader(TensorDataset(x, x), 8)),
                    forward_batch=lambda m, b, ctx: torch.nn.functional.mse_loss(m(b[0]), b[1]))
    return sent, fit(recipe, Cfg(), run_dir=tmp_path / "run")


def test_fit_with_a_run_dir_draws_the_history(tmp_path: Path, monkeypatch):
    """The PlotWriter sends the run's own history (from the loop state, not a re-read file):
    with no pacing, a frame after every validation, then the final one."""
    from engine.io.writers import PlotWriter

    monkeypatch.setattr(PlotWriter, "FIRST_FRAME_S", 0.0)
    monkeypatch.setattr(PlotWriter, "FRAME_EVERY_S", 0.0)
    sent, result = _tiny_fit(tmp_path, monkeypatch)
    assert [final for _, final in sent] == [False, False, False, True]
    metrics, _ = sent[-1]
    assert metrics["history"]["val_loss"] == result.history["val_loss"]
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["history"]["epoch"] == on_disk["history"]["epoch"] == [0, 1, 2]


def test_frames_while_training_are_paced(tmp_path: Path, monkeypatch):
    """A run shorter than the first frame's delay sends its final frame alone; later frames
    come at most one per interval, each with the history so far."""
    from engine.io import writers

    sent, _ = _tiny_fit(tmp_path / "short", monkeypatch)
    assert [final for _, final in sent] == [True]   # a sub-second fit: no frame while training

    clock = iter(range(1000))   # one second a call: FIT_START at 0, a validation a second
    monkeypatch.setattr(writers.PlotWriter, "clock", staticmethod(lambda: float(next(clock))))
    monkeypatch.setattr(writers.PlotWriter, "FIRST_FRAME_S", 2.0)
    monkeypatch.setattr(writers.PlotWriter, "FRAME_EVERY_S", 1.5)
    sent, _ = _tiny_fit(tmp_path / "long", monkeypatch, epochs=6)
    live = [len(m["history"]["epoch"]) for m, final in sent if not final]
    assert sent[-1][1] and len(sent[-1][0]["history"]["epoch"]) == 6
    assert live and live == sorted(set(live)) and len(live) < 6
    assert all(b - a >= 2 for a, b in zip(live, live[1:]))   # 1.5 s apart: every other one


@pytest.mark.slow
def test_a_named_figure_is_drawn_by_the_helper_and_waited_for(tmp_path: Path, monkeypatch):
    """submit_figure: a higher layer's figure (study.png) drawn by the helper through the
    function it names; with the helper gone, drawn here instead."""
    monkeypatch.delenv("ENGINE_PLOTS", raising=False)
    payload = {"data": {"objective": {"metric": "val_loss"}, "configurations": [
        {"configuration": 0, "params": {"lr": 0.1}, "mean": 0.5, "ci95": [0.4, 0.6],
         "runs": [{"value": 0.5, "status": "completed"}]}]},
        "curves": [[0, [{"epoch": [0, 1], "val_loss": [0.7, 0.5]}]]]}
    service = plot_service.PlotService()
    service.warm()
    assert service.running()
    service.submit_figure(tmp_path / "study.png", "engine.study.picture:render", payload)
    service.wait(timeout=120)
    assert _is_png(tmp_path / "study.png") and service._pending == {}
    service.close()
    service._mark_dead()
    service.submit_figure(tmp_path / "here.png", "engine.study.picture:render", payload)
    assert _is_png(tmp_path / "here.png")


def test_without_live_frames_only_the_final_one_is_drawn(tmp_path: Path, monkeypatch):
    """live = False (a study's runs): frames during training are dropped, not sent; the final
    frame is still drawn (here inline, so no helper is needed to see it)."""
    monkeypatch.setenv("ENGINE_PLOTS", "inline")
    service = plot_service.PlotService()
    service.live = False
    service.submit(tmp_path / "m.png", _metrics(2), "m", final=False)
    assert not (tmp_path / "m.png").exists()
    service.submit(tmp_path / "m.png", _metrics(3), "m", final=True)
    assert _is_png(tmp_path / "m.png")
