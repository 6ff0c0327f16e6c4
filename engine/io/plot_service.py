"""metrics.png off the training path: a helper process draws it while the run trains.

Importing matplotlib and drawing a figure cost about 1.5 s and 0.15 s here: more than a small
fit. So the first run in a process starts one helper process (`python -m
engine.io.plot_service`), which imports matplotlib on another core while the first epoch
trains, and draws the frames it is sent (engine.io.writers.PlotWriter paces them): the latest
history after a validation (frames that arrive while it is busy or resting are skipped: only
the newest per file is drawn; it rests 3x as long as it drew, so it takes at most a quarter of
a core from training) and the final one at the end, at once (only the final one when `live` is
off, as in a study's workers).
`wait_for_plots()` returns once every final frame is on disk; `python -m engine
run` calls it before it exits, and it runs at interpreter exit. Should the helper die, the
frames it did not draw are drawn in this process, so metrics.png is never missing.

`ENGINE_PLOTS=inline` draws in the training process instead (debugging, tests).
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.io.files import atomic_write_bytes

# after drawing a frame of a run still training, the helper rests REST times as long: it takes
# at most a quarter of a core from the run (and its file writer) on a small machine
REST = 3.0


class PlotService:
    """The client side: submit frames, wait for the final ones."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Condition()
        self._next_id = 0
        self._pending: dict[str, dict] = {}   # path -> newest final job
        self._failed: dict[str, dict] = {}
        self._dead = False
        # False: only final frames are drawn (a study's runs: with a worker per core, the
        # helpers' frames during training would take the cores the fits need)
        self.live = True

    def submit(self, path: Path, metrics: dict, title: str, final: bool) -> None:
        """Ask for `path` to be drawn from `metrics` (a metrics.json-shaped dict)."""
        if not final and not self.live:
            return
        if os.environ.get("ENGINE_PLOTS") == "inline":
            from engine.io.plots import plot_metrics  # deferred: matplotlib is slow to import
            plot_metrics(path, metrics, title)
            return
        with self._lock:
            self._next_id += 1
            job = {"id": self._next_id, "path": str(path), "metrics": metrics, "title": title,
                   "final": final}
            if final:
                self._pending[str(path)] = job
        if not self._send(json.dumps(job, allow_nan=True)) and final:
            self._draw_pending()

    def submit_figure(self, path: Path, draw: str, payload: dict) -> None:
        """Ask for `path` to be drawn by `draw` ("module:function", taking `payload`, a JSON
        dict, and returning PNG bytes): a figure of a higher layer (a study's study.png) drawn
        by the helper, whose matplotlib is already loaded. Final: `wait` waits for it."""
        job = {"path": str(path), "draw": draw, "payload": payload, "final": True}
        if os.environ.get("ENGINE_PLOTS") == "inline" or self._dead:
            _draw(job)
            return
        with self._lock:
            self._next_id += 1
            job["id"] = self._next_id
            self._pending[str(path)] = job
        if not self._send(json.dumps(job, allow_nan=True)):
            self._draw_pending()

    def running(self) -> bool:
        """Whether the helper process is up (its matplotlib loaded, or loading)."""
        return self._proc is not None and self._proc.poll() is None and not self._dead

    def warm(self) -> None:
        """Start the helper now, so it imports matplotlib while this process imports torch
        and trains (a no-op once started, or with ENGINE_PLOTS=inline)."""
        if os.environ.get("ENGINE_PLOTS") != "inline" and self._proc is None and not self._dead:
            try:
                self._start()
            except OSError:
                self._mark_dead()

    def wait(self, timeout: float = 120.0) -> None:
        """Return once every final frame submitted so far is drawn (here, if the helper is
        gone or too slow)."""
        with self._lock:
            self._lock.wait_for(lambda: not self._pending or self._dead, timeout)
        self._draw_pending()

    # --- the helper process ---------------------------------------------------------------
    def _send(self, line: str) -> bool:
        try:
            if self._proc is None and not self._dead:
                self._start()
            if self._dead:
                return False
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            return True
        except (OSError, ValueError):
            self._mark_dead()
            return False

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "engine.io.plot_service"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            start_new_session=True)   # a Ctrl-C meant for the run must not kill the drawing
        threading.Thread(target=self._read_acks, daemon=True).start()

    def _read_acks(self) -> None:
        for line in self._proc.stdout:
            try:
                ack = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                job = self._pending.get(ack["path"])
                if job is not None and job["id"] <= ack["id"]:
                    if ack["ok"]:
                        del self._pending[ack["path"]]
                    else:   # drawn again here by wait(), which logs why it fails
                        self._failed[ack["path"]] = self._pending.pop(ack["path"])
                self._lock.notify_all()
        self._mark_dead()

    def _mark_dead(self) -> None:
        with self._lock:
            self._dead = True
            self._lock.notify_all()

    def _draw_pending(self) -> None:
        with self._lock:
            jobs = [*self._pending.items(), *self._failed.items()]
            self._pending, self._failed = {}, {}
        for path, job in jobs:
            try:
                _draw(job)
            except Exception as exc:   # a plot never fails a run: metrics.json is the record
                logging.getLogger("engine").warning(
                    "warning: %s could not be drawn: %s: %s", path, type(exc).__name__, exc)

    def close(self) -> None:
        """Wait for the final frames, then let the helper exit."""
        self.wait()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()


_SERVICE: PlotService | None = None


def service() -> PlotService:
    """The process's plot service (made on first use)."""
    global _SERVICE
    if _SERVICE is None:
        _SERVICE = PlotService()
        atexit.register(_SERVICE.close)
    return _SERVICE


def wait_for_plots(timeout: float = 120.0) -> None:
    """Every metrics.png submitted so far is on disk when this returns."""
    if _SERVICE is not None:
        _SERVICE.wait(timeout)


def _draw(job: dict) -> None:
    """Draw one job here: a metrics.png frame, or a figure by its named function."""
    if "draw" in job:
        module, _, function = job["draw"].partition(":")
        png = getattr(importlib.import_module(module), function)(job["payload"])
        atomic_write_bytes(Path(job["path"]), png)
    else:
        from engine.io.plots import plot_metrics  # deferred: matplotlib is slow to import
        plot_metrics(job["path"], job["metrics"], job["title"])


# --- the helper's side ------------------------------------------------------------------------

def serve() -> None:
    """Read frames from stdin, draw the newest per file, acknowledge each drawn (or failed)
    frame as a JSON line {"id", "path", "ok"}."""
    from engine.io.plots import warm_up  # deferred: imported while idle

    try:   # background work: the runs (a study's workers) come first when cores are short
        os.nice(10)
    except OSError:
        pass
    newest: dict[str, dict] = {}
    ready = threading.Condition()
    closed = []

    def read() -> None:
        for line in sys.stdin:
            job = json.loads(line)
            with ready:
                newest[job["path"]] = job   # a frame not yet drawn is skipped for a newer one
                ready.notify()
        with ready:
            closed.append(True)
            ready.notify()

    threading.Thread(target=read, daemon=True).start()
    try:
        warm_up()
    except Exception:   # the real frames say what is wrong, if anything is
        pass
    resume_at = 0.0
    while True:
        with ready:
            ready.wait_for(lambda: newest or closed)
            if not newest:
                return

            def due(until: float = resume_at) -> bool:   # a final frame or the end cut it short
                return (closed or time.monotonic() >= until
                        or any(job.get("final") for job in newest.values()))

            ready.wait_for(due, max(0.0, resume_at - time.monotonic()))
            finals = [p for p, job in newest.items() if job.get("final")]
            path = finals[0] if finals else next(iter(newest))
            job = newest.pop(path)
        started = time.monotonic()
        try:
            _draw(job)
            ok = True
        except Exception:   # one bad frame must not end the others
            ok = False
        if not job.get("final"):
            resume_at = time.monotonic() + REST * (time.monotonic() - started)
        print(json.dumps({"id": job["id"], "path": path, "ok": ok}), flush=True)


if __name__ == "__main__":
    serve()
