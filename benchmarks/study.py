"""A study's cost next to a shell loop of `engine run`: 12 runs of the autoencoder, 2 epochs each.

    python benchmarks/study.py                 # writes benchmarks/results/study.json
    python benchmarks/study.py --quick         # 4 runs, a smoke run

Three ways to make the same 12 runs (`--grid train.learning_rate=1e-3,3e-3,1e-2 --seeds 4`):

- `loop`: 12 processes of `python -m engine run autoencoder --set ...`, one after another
  (what a shell loop does: every run pays Python's, torch's and the recipe's start-up);
- `sweep-1`: `python -m engine sweep ... --workers 1` (this process is the worker);
- `sweep-2`: `python -m engine sweep ... --workers 2` (two worker processes).

For each sweep the per-trial overhead beyond the fits is, per worker, (time from its first
claim to its last finish - the time its fit calls took) / its runs: claiming, resolving the
config, recording, rewriting results.json and results.md (each pair record holds `fit_s`,
`claimed_at` and `finished_at`). Start-up is everything before the first claim (imports, the
objective's forward pass, making the study). The machine's load (`uptime`) goes with the figures.
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
BASE = ["--set", "train.epochs=2"]


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


def shell_loop(rates: list[str], seeds: int, cwd: Path) -> dict:
    started = time.perf_counter()
    for rate in rates:
        for seed in range(seeds):
            _engine(["run", "autoencoder", *BASE, "--set", f"train.learning_rate={rate}",
                     "--set", f"train.seed={seed}"], cwd)
    return {"wall_s": round(time.perf_counter() - started, 2), "runs": len(rates) * seeds}


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def sweep(rates: list[str], seeds: int, workers: int, cwd: Path) -> dict:
    started = time.time()
    wall = _engine(["sweep", "autoencoder", *BASE, "--grid",
                    f"train.learning_rate={','.join(rates)}", "--seeds", str(seeds),
                    "--workers", str(workers)], cwd)
    (study,) = (cwd / "artifacts" / "studies" / "autoencoder").iterdir()
    records = [json.loads(p.read_text()) for p in sorted((study / "pairs").glob("*.json"))]
    by_worker: dict = {}
    for r in records:
        by_worker.setdefault(r["worker"]["token"], []).append(r)
    overheads, first_claim = [], min(_t(r["claimed_at"]) for r in records)
    for rs in by_worker.values():
        span = max(_t(r["finished_at"]) for r in rs) - min(_t(r["claimed_at"]) for r in rs)
        overheads.append((span - sum(r["fit_s"] for r in rs)) / len(rs))
    fits = [r["fit_s"] for r in records]
    return {"wall_s": round(wall, 2), "runs": len(records), "workers": len(by_worker),
            "start_up_s": round(first_claim - started, 2),
            "fit_s_mean": round(sum(fits) / len(fits), 3),
            "overhead_per_trial_s": [round(o, 3) for o in overheads]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "study.json"))
    args = parser.parse_args()
    rates, seeds = (["1e-3", "1e-2"], 2) if args.quick else (["1e-3", "3e-3", "1e-2"], 4)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results = {"load_before": load, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, job in (("loop", lambda d: shell_loop(rates, seeds, d)),
                          ("sweep-1", lambda d: sweep(rates, seeds, 1, d)),
                          ("sweep-2", lambda d: sweep(rates, seeds, 2, d))):
            folder = Path(tmp) / name
            folder.mkdir()
            results[name] = job(folder)
            print(name, results[name], flush=True)
    results["load_after"] = subprocess.run(["uptime"], capture_output=True,
                                           text=True).stdout.strip()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
