"""The verbs of studies: sweep (make, resume or join a study) and report.

    python -m engine sweep NAME [--grid KEY=V1,V2]... [--search KEY=SPEC]... [--seeds N] ...
    python -m engine sweep --resume STUDY_DIR [--workers N] [--retry-failed]
    python -m engine sweep --worker STUDY_DIR
    python -m engine report STUDY_DIR [--json]

Exit codes: 0 every run ended (completed, early stopped or pruned); 1 some run failed (or a
worker died and left runs to resume); 2 a user error before anything ran, no study directory
made; 130 stopped by SIGINT or SIGTERM, resumable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from engine.cli.args import common, config_options, sets_of
from engine.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_SIGNAL
from engine.core.errors import UserError

_EXITS = {"done": EXIT_OK, "elsewhere": EXIT_OK, "failed": EXIT_FAILED, "unfinished": EXIT_FAILED,
          "interrupted": EXIT_SIGNAL}
_SPEC_FLAGS = ("grid", "search", "trials", "sampler", "prune", "seeds", "replicate",
               "objective", "storage", "config", "output_dir")


def add(verbs: Any) -> dict:
    """Add sweep and report to the verb sub-parsers; their handlers."""
    p = verbs.add_parser("sweep", help="run many runs as one experiment (a study)")
    p.add_argument("name", nargs="?", metavar="NAME", help="recipe name in recipes.toml")
    config_options(p, output=True, name=False)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="every combination of the listed values (TOML values; repeatable)")
    p.add_argument("--search", action="append", default=[], metavar="KEY=SPEC",
                   help="loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH or "
                        "choice:V1,V2,... (repeatable)")
    p.add_argument("--trials", type=int, metavar="N", help="search trials (default 10)")
    p.add_argument("--sampler", choices=("tpe", "random"), help="search sampler (default tpe)")
    p.add_argument("--prune", action="store_true",
                   help="median pruner fed each validation's objective")
    p.add_argument("--seeds", type=int, metavar="N", help="replicates: train.seed = 0..N-1")
    p.add_argument("--replicate", metavar="KEY=V1,V2,...", help="replicates over another key")
    p.add_argument("--objective", metavar="METRIC[:min|max]",
                   help="a history column (default val_loss:min)")
    p.add_argument("--workers", type=int, metavar="N", help="processes on this machine")
    p.add_argument("--storage", metavar="URL", help="trial store (default: a journal file in "
                   "the study directory; postgresql://... for many machines)")
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue a study")
    p.add_argument("--worker", metavar="STUDY_DIR", help="join a study as one more worker")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run the failed runs again")
    common(p)
    p = verbs.add_parser("report", help="print (and rewrite) a study's results")
    p.add_argument("study_dir", metavar="STUDY_DIR")
    p.add_argument("--json", action="store_true", help="print results.json")
    common(p)
    return {"sweep": cmd_sweep, "report": cmd_report}


def _given_flags(args: Any) -> list[str]:
    return [f"--{f.replace('_', '-')}" for f in _SPEC_FLAGS
            if getattr(args, f) not in (None, [], False)] + (["NAME"] if args.name else [])


def cmd_sweep(args: Any) -> int:
    """`sweep NAME ...`, `sweep --resume STUDY_DIR`, `sweep --worker STUDY_DIR`: run a study."""
    from engine.io import plot_service  # deferred: start-up time
    if args.worker:
        plot_service.service().warm()   # matplotlib loads while this process imports torch
        return _join(args)
    if args.resume and args.workers is not None and args.workers < 1:
        # `or 1` below would hide it; a new sweep reports it with its other mistakes (checks.py)
        raise UserError("--workers needs at least one worker", where=f"--workers {args.workers}",
                        expected="N >= 1", found=str(args.workers))
    workers = args.workers or 1
    if workers == 1:   # matplotlib loads while this process imports torch
        plot_service.service().warm()
    from engine.study import local, sweep  # deferred: start-up time
    threads = local.threads_per_worker(workers)
    local.set_threads(threads)
    standby = None
    if workers > 1 and local.can_fork():
        # the other workers are forks of this process, bare (no thread, no store, no check
        # run yet) but with torch, Optuna and the first optimizer loaded: they cost no start-up
        local.warm_imports()
        standby = local.fork_standby(workers - 1, args.recipes, threads)
    try:
        # with forks, only now (a helper's reader thread must not be forked): matplotlib loads
        # while this process checks the flags, not in a backlog at the study's end
        plot_service.service().warm()
        return _sweep(args, sweep, workers, standby)
    finally:
        if standby is not None:
            standby.cancel()   # a no-op once started


def _sweep(args: Any, sweep: Any, workers: int, standby: Any) -> int:
    if args.resume:
        from engine.study import resume  # deferred: start-up time
        study_dir, spec, _ = resume.open_study(args.resume)
        resume.check_runnable(spec, study_dir, args.recipes)
        resume.check_same(args, spec, study_dir, sets_of(args))
        _refuse_sqlite(spec.storage, workers, f"--resume {study_dir} --workers {workers}")
        if args.retry_failed:
            print(f"{resume.retry_failed(study_dir)} failed run(s) will run again")
    else:
        if not args.name:
            raise UserError("sweep needs a recipe or a study", where="python -m engine sweep",
                            expected="NAME, --resume STUDY_DIR or --worker STUDY_DIR",
                            found="none of them")
        if args.retry_failed:
            raise UserError("--retry-failed needs --resume", where="--retry-failed",
                            expected="sweep --resume STUDY_DIR --retry-failed",
                            found="a new study")
        from engine.study.checks import specify  # deferred: start-up time
        spec, _, _, cfg = specify(args, sets_of(args))
        study_dir = sweep.create(spec, cfg.train.output_dir)
    print(f"study directory: {study_dir}", flush=True)
    outcome = sweep.run_workers(study_dir, workers, args.recipes, standby)
    print(sweep.describe_end(study_dir, outcome),
          file=sys.stdout if outcome in ("done", "elsewhere") else sys.stderr)
    return _EXITS[outcome]


def _join(args: Any) -> int:
    from engine.study.resume import check_runnable, open_study  # deferred: start-up time
    from engine.study.worker import said, work  # deferred: start-up time
    given = _given_flags(args) + [flag for flag, on in (
        ("--resume", args.resume), ("--workers", args.workers is not None),
        ("--retry-failed", args.retry_failed)) if on]
    if given:
        raise UserError("--worker takes no specification", where="--worker " + args.worker,
                        expected="sweep --worker STUDY_DIR (the study holds its specification)",
                        found="also " + ", ".join(given))
    study_dir, spec, _ = open_study(args.worker)
    check_runnable(spec, study_dir, args.recipes)
    _refuse_sqlite(spec.storage, 2, f"--worker {study_dir}")
    print(f"worker joins study {study_dir}", flush=True)
    return _EXITS[work(study_dir, recipes=args.recipes, on_done=said)]


def _refuse_sqlite(storage: str, workers: int, where: str) -> None:
    if storage.startswith("sqlite:") and workers > 1:
        raise UserError("SQLite storage is refused for more than one worker", where=where,
                        expected="one worker, or a study on the journal file or PostgreSQL",
                        found=f"the study's storage {storage}",
                        hint="SQLite locks the whole database on every write: parallel "
                             "workers fail with 'database is locked'")


def cmd_report(args: Any) -> int:
    """`report STUDY_DIR`: rewrite results.json, results.md and study.png, and print them."""
    from engine.study.report import write_results  # deferred: start-up time
    from engine.study.resume import open_study  # deferred: start-up time
    study_dir, spec, study_id = open_study(args.study_dir)
    data = write_results(study_dir, spec, study_id, picture=True)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write((study_dir / "results.md").read_text(encoding="utf-8"))
    return EXIT_OK
