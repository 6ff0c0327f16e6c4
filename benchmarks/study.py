"""A study's cost next to a shell loop of `engine run`: 12 runs of the autoencoder.

    python benchmarks/study.py                 # 2, 30 and 100 epochs, 3 rounds: ~12 min
    python benchmarks/study.py --quick         # 4 runs of 2 epochs, one round: a smoke run
    python benchmarks/study.py --epochs 30 --rounds 5

The same 12 runs (`--grid train.learning_rate=1e-3,3e-3,1e-2 --seeds 4`) made three ways:

- `loop`: 12 processes of `python -m engine run autoencoder --set ...`, one after another
  (what a shell loop does: every run pays Python's, torch's and the recipe's start-up); only
  for the smallest epoch count, once;
- `sweep-1`: `python -m engine sweep ... --workers 1` (this process is the worker);
- `sweep-2`: `python -m engine sweep ... --workers 2` (the sweep and one fork of it).

`sweep-1` and `sweep-2` alternate in rounds; the table has the median wall time over rounds
and the median of the per-round ratios. For each sweep the per-trial overhead beyond the fits
is, per worker, (time from its first claim to its last finish - the time its fit calls took) /
its runs: claiming, resolving the config, recording, rewriting results.json and results.md
(each pair record holds `fit_s`, `claimed_at` and `finished_at`). Start-up is everything before
the first claim (imports, the objective's forward pass, making the study); `second_claim_s`
is how much later the second worker's first claim came. The machine's load (`uptime`) goes
with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE"}


def _engine(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", *args, "--recipes",
                           str(ROOT / "recipes.toml")], cwd=cwd, env=_env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def shell_loop(rates: list[str], seeds: int, cwd: Path, base: list[str]) -> dict:
    started = time.perf_counter()
    for rate in rates:
        for seed in range(seeds):
            _engine(["run", "autoencoder", *base, "--set", f"train.learning_rate={rate}",
                     "--set", f"train.seed={seed}"], cwd)
    return {"wall_s": round(time.perf_counter() - started, 2), "runs": len(rates) * seeds}


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def sweep(rates: list[str], seeds: int, workers: int, cwd: Path, base: list[str]) -> dict:
    started = time.time()
    wall = _engine(["sweep", "autoencoder", *base, "--grid",
                    f"train.learning_rate={','.join(rates)}", "--seeds", str(seeds),
                    "--workers", str(workers)], cwd)
    (study,) = (cwd / "artifacts" / "studies" / "autoencoder").iterdir()
    records = [json.loads(p.read_text()) for p in sorted((study / "pairs").glob("*.json"))]
    by_worker: dict = {}
    for r in records:
        by_worker.setdefault(r["worker"]["token"], []).append(r)
    overheads, firsts = [], sorted(min(_t(r["claimed_at"]) for r in rs)
                                   for rs in by_worker.values())
    for rs in by_worker.values():
        span = max(_t(r["finished_at"]) for r in rs) - min(_t(r["claimed_at"]) for r in rs)
        overheads.append((span - sum(r["fit_s"] for r in rs)) / len(rs))
    fits = [r["fit_s"] for r in records]
    return {"wall_s": round(wall, 2), "runs": len(records), "workers": len(by_worker),
            "start_up_s": round(firsts[0] - started, 2),
            "second_claim_s": round(firsts[1] - firsts[0], 2) if len(firsts) > 1 else None,
            "last_finish_s": round(max(_t(r["finished_at"]) for r in records) - started, 2),
            "fit_s_mean": round(sum(fits) / len(fits), 3),
            "overhead_per_trial_s": [round(o, 3) for o in overheads]}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", default="2,30,100", help="epoch counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the shell loop")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "study.json"))
    args = parser.parse_args()
    rates, seeds = (["1e-3", "1e-2"], 2) if args.quick else (["1e-3", "3e-3", "1e-2"], 4)
    epochs = [2] if args.quick else [int(e) for e in args.epochs.split(",")]
    rounds = 1 if args.quick else args.rounds
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results: dict = {"load_before": load, "cpus": os.cpu_count(), "rounds": rounds,
                     "by_epochs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in epochs:
            base = ["--set", f"train.epochs={n}"]
            entry: dict = {"sweep-1": [], "sweep-2": []}
            if n == min(epochs) and not args.no_loop:
                folder = Path(tmp) / f"loop-{n}"
                folder.mkdir()
                entry["loop"] = shell_loop(rates, seeds, folder, base)
                print(n, "loop", entry["loop"], flush=True)
            for r in range(rounds):
                for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                    folder = Path(tmp) / f"e{n}-r{r}-w{workers}"
                    folder.mkdir()
                    entry[f"sweep-{workers}"].append(sweep(rates, seeds, workers, folder, base))
                    print(n, f"sweep-{workers}", entry[f"sweep-{workers}"][-1], flush=True)
            ones = [x["wall_s"] for x in entry["sweep-1"]]
            twos = [x["wall_s"] for x in entry["sweep-2"]]
            entry["median_wall_s"] = {"sweep-1": _median(ones), "sweep-2": _median(twos)}
            entry["median_ratio_1_over_2"] = round(_median([a / b for a, b in zip(ones, twos)]),
                                                   3)
            if "loop" in entry:
                entry["loop_over_sweep_1"] = round(entry["loop"]["wall_s"] / _median(ones), 2)
            results["by_epochs"][str(n)] = entry
            print(n, "medians", entry["median_wall_s"], "1/2", entry["median_ratio_1_over_2"],
                  flush=True)
    results["load_after"] = subprocess.run(["uptime"], capture_output=True,
                                           text=True).stdout.strip()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({n: {k: v for k, v in e.items() if k.startswith(("median", "loop_"))}
                      for n, e in results["by_epochs"].items()}, indent=2))


if __name__ == "__main__":
    main()
