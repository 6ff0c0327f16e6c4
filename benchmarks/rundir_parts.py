"""Where the run directory's time goes: one workload of overhead.py, fit with its run directory
and with one part of it switched off at a time, in shuffled rounds.

    python benchmarks/rundir_parts.py                      # research, 16 rounds
    python benchmarks/rundir_parts.py --workload tiny --rounds 25

Each variant is `fit(recipe, cfg, run_dir=...)` (what `python -m engine run` does) with one
part replaced, except `hand` (overhead.py's hand-written loop) and `no run dir`:

| variant | what is off |
|---|---|
| `no checkpoints` | the checkpointer (no last.pt, best.pt, model.pt; nothing serialised) |
| `no writers` | metrics.json, train.log, the progress bar, the plot, the trackers |
| `nothing written` | every file write of the run's writer thread (serialisation still runs) |
| `no fsync` | `os.fsync` of files and folders (writes and renames still run) |
| `no folder fsync` | the fsync of the folder after each rename |
| `writes in the loop` | no writer thread: each file is written where it is handed over |

The parts are switched off by replacing the engine's functions for the variant's fits, so
this measures the engine as it is, not a copy of it. Reported: the median and minimum wall
time of a fit, its ratio to the hand loop's median, the process's CPU time (all threads) and
the training thread's own (wall minus it: time that thread waited, for the GIL or the disk).
Each fit's final metrics.png is waited for, untimed, before the next variant runs.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import overhead  # noqa: E402  (the workloads and runners of overhead.py)

from engine.core.wiring import NoCheckpoints  # noqa: E402
from engine.io import file_writer, files  # noqa: E402
from engine.io import fit as fit_module  # noqa: E402


def _nothing(*args: object, **kwargs: object) -> None:
    return None


@contextlib.contextmanager
def _replaced(target: object, name: str, value: object) -> Iterator[None]:
    saved = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, saved)


@contextlib.contextmanager
def _off(variant: str) -> Iterator[None]:
    """The variant's part switched off while its fit runs."""
    with contextlib.ExitStack() as stack:
        if variant == "no checkpoints":
            stack.enter_context(_replaced(fit_module, "RunDirCheckpointer",
                                          lambda *a, **k: NoCheckpoints()))
        elif variant == "no writers":
            stack.enter_context(_replaced(fit_module.writers, "standard",
                                          lambda run: ((), ())))
        elif variant == "nothing written":
            stack.enter_context(_replaced(file_writer, "atomic_write_bytes", _nothing))
            stack.enter_context(_replaced(file_writer, "atomic_write_shared", _nothing))
        elif variant == "no fsync":
            stack.enter_context(_replaced(files.os, "fsync", _nothing))
        elif variant == "no folder fsync":
            stack.enter_context(_replaced(files, "_fsync_dir", _nothing))
        elif variant == "writes in the loop":
            stack.enter_context(_replaced(fit_module, "FileWriter", lambda: None))
        yield


VARIANTS = ("hand", "no run dir", "run dir", "no checkpoints", "no writers",
            "nothing written", "no fsync", "no folder fsync", "writes in the loop")


def _runner(w: overhead.Workload, variant: str) -> Callable[[], object]:
    if variant == "hand":
        return lambda: overhead.run_hand(w, w.epochs)
    if variant == "no run dir":
        return lambda: overhead.run_engine(w, w.epochs)

    def run() -> object:
        with _off(variant):
            return overhead.run_engine_callbacks(w, w.epochs)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="research", choices=overhead.WORKLOADS)
    parser.add_argument("--rounds", type=int, default=16, help="the first is discarded")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is discarded)")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="rundir-parts-"))
    workloads = overhead.make_workloads(work, "cpu", "fp32", False)
    if args.workload not in workloads:
        parser.error(f"workload {args.workload} is not available here")
    w = workloads[args.workload]
    runners = {v: _runner(w, v) for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    main_cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS)
        random.shuffle(order)
        for v in order:
            t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            runners[v]()
            t1, c1, m1 = time.perf_counter(), time.process_time(), time.thread_time()
            # the final metrics.png is drawn by the helper after fit returns: untimed, and
            # finished before the next variant, which it would otherwise slow
            overhead.wait_for_plots()
            if r:   # the first round warms imports and caches
                wall[v].append((t1 - t0) * 1e3)
                cpu[v].append((c1 - c0) * 1e3)
                main_cpu[v].append((m1 - m0) * 1e3)
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    hand = statistics.median(wall["hand"])
    print(f"{w.name}: {w.description}, {w.epochs} epochs; ms a fit, {args.rounds - 1} rounds")
    print("| variant | wall median | wall min | ratio to hand | CPU median | main thread CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        print(f"| {v} | {statistics.median(wall[v]):.0f} | {min(wall[v]):.0f} | "
              f"{statistics.median(wall[v]) / hand:.3f} | {statistics.median(cpu[v]):.0f} | "
              f"{statistics.median(main_cpu[v]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
