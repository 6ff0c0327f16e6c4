"""ranking_v2 on held-out datasets: K folds over datasets (or seed replicates), in one process.

    python benchmarks/ranking_folds.py                   # 5 folds: data.folds=5, data.fold=0..4
    python benchmarks/ranking_folds.py --seeds 5         # 5 seeds on the default split instead
    python benchmarks/ranking_folds.py --set train.epochs=3 --json results/ranking_folds.json

Each replicate is `engine.fit` with the recipes.toml config of ranking_v2 (plus `--set`), no run
directory (nothing is written; the figures are the ones a run's metrics.json `test` holds: the
held-out datasets scored once with the best validation's weights). The table has, per metric,
the model and the popularity baseline (mean training score per model: "pick what is best on
average"), each as mean and 95% t-interval over the replicates, and the model's margin over
popularity, paired by replicate (mean and its interval, min and max).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning threads (PITFALLS)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("weighted_tau", "ndcg_at_1", "ndcg_at_5", "kendall_tau", "top1_hit", "rel_at_1",
           "regret_at_1")


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the 95% Student-t interval of the mean (NaN bounds for one value)."""
    from scipy import stats
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(
        len(values))
    return mean, mean - half, mean + half


def run_replicates(sets: list[str], replicates: list[list[str]], recipes: Path) -> list[dict]:
    """One fit per replicate; each returns its `test` entry, best epoch and seconds."""
    from engine import fit
    from engine.io.registry import resolve
    out = []
    for extra in replicates:
        _, recipe, cfg = resolve("ranking_v2", recipes=recipes, sets=[*sets, *extra])
        start = time.monotonic()
        result = fit(recipe, cfg)
        test = result.state.run.metrics_extra["test"]
        out.append({"replicate": " ".join(extra), "best_epoch": result.best_epoch,
                    "epochs": len(result.history["epoch"]), "status": result.status,
                    "seconds": round(time.monotonic() - start, 1), "test": test})
        print(f"  {' '.join(extra)}: best epoch {result.best_epoch + 1}, weighted tau model "
              f"{test['model']['weighted_tau']:.4f} popularity "
              f"{test['popularity']['weighted_tau']:.4f} ({out[-1]['seconds']} s)",
              file=sys.stderr, flush=True)
    return out


def table(runs: list[dict]) -> str:
    """The markdown table: model, popularity and the paired margin, per metric."""
    def cell(values: list[float]) -> str:
        mean, low, high = t_interval(values)
        return f"{mean:.4f} [{low:.4f}, {high:.4f}]"

    lines = [f"n = {len(runs)} replicates; mean [95% t-interval]; margin = model - popularity "
             "paired by replicate (regret: popularity - model, so positive = model better)", "",
             "| metric | model | popularity | margin | margin min..max |",
             "|---|---|---|---|---|"]
    for metric in METRICS:
        model = [r["test"]["model"][metric] for r in runs]
        pop = [r["test"]["popularity"][metric] for r in runs]
        sign = -1.0 if metric == "regret_at_1" else 1.0
        margin = [sign * (m - p) for m, p in zip(model, pop, strict=True)]
        lines.append(f"| {metric} | {cell(model)} | {cell(pop)} | {cell(margin)} | "
                     f"{min(margin):+.4f}..{max(margin):+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5, help="K folds over datasets (default 5)")
    parser.add_argument("--seeds", type=int, default=0,
                        help="N seed replicates (train.seed = 0..N-1) on the default split "
                        "instead of folds")
    parser.add_argument("--set", action="append", default=[], dest="sets",
                        metavar="KEY=VALUE", help="a config override, as `engine run` takes it")
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes.toml")
    parser.add_argument("--json", type=Path, help="also write the runs and figures here")
    args = parser.parse_args(argv)
    if args.seeds:
        replicates = [[f"train.seed={s}"] for s in range(args.seeds)]
    else:
        replicates = [[f"data.folds={args.folds}", f"data.fold={k}"] for k in range(args.folds)]
    runs = run_replicates(args.sets, replicates, args.recipes)
    text = table(runs)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sets": args.sets, "runs": runs, "table": text},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
