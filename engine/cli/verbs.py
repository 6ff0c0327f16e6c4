"""The verbs that train or show a recipe: list, show, run.

Each verb is `add(verbs)` (its sub-parser) and a `cmd_*(args) -> exit code`; `engine.cli.main`
dispatches. Heavy modules (torch, the loop) are imported inside the verbs: `list` and `show`
need none of them, and `python -m engine` sets OpenMP's wait policy before torch loads.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from engine.cli.args import common, config_options, sets_of
from engine.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_SIGNAL


def add(verbs: Any) -> dict:
    """Add list, show and run to the verb sub-parsers; their handlers."""
    p = verbs.add_parser("list", help="list the registered recipes")
    common(p)
    p = verbs.add_parser("show", help="print a recipe's resolved config as TOML")
    config_options(p)
    common(p)
    p = verbs.add_parser("run", help="train a recipe")
    config_options(p, output=True)
    p.add_argument("--resume", metavar="PATH", help="a run directory or a checkpoint to continue")
    common(p)
    return {"list": cmd_list, "show": cmd_show, "run": cmd_run}


def cmd_list(args: Any) -> int:
    """`list`: one registered recipe a line, name then description."""
    from engine.io.registry import find_registry, read_registry  # deferred: start-up time
    entries = read_registry(find_registry(args.recipes))
    width = max((len(n) for n in entries), default=0)
    for name, entry in entries.items():
        print(f"{name:<{width}}  {entry.description}".rstrip())
    return EXIT_OK


def cmd_show(args: Any) -> int:
    """`show NAME`: the resolved config as TOML (the --config format), nothing else."""
    from engine.io.layering import to_toml  # deferred: start-up time
    from engine.io.registry import resolve  # deferred: start-up time
    _, _, cfg = resolve(args.name, recipes=args.recipes, config_file=args.config, sets=args.sets)
    sys.stdout.write(to_toml(cfg))
    return EXIT_OK


def cmd_run(args: Any) -> int:
    # first, before torch loads: a signal during start-up is a clean stop too (exit 130)
    """`run NAME`: train in a new run directory (or continue one with --resume)."""
    from engine.core.signals import StopRequest  # deferred: start-up time
    from engine.io import plot_service  # deferred: start-up time
    stop = StopRequest().install()
    if os.environ.get("RANK", "0") == "0":   # under torchrun rank 0 alone draws
        plot_service.service().warm()   # its matplotlib import overlaps this process's torch
    try:
        return _run(args)
    finally:
        stop.restore()
        from engine.io.plot_service import wait_for_plots  # loaded by the run, if it plotted
        wait_for_plots()   # metrics.png is whole when `run` returns


def _run(args: Any) -> int:
    from engine.core.events import Event, listens_to  # deferred: start-up time
    from engine.io import resume as resuming  # deferred: start-up time
    from engine.io.fit import fit  # deferred: start-up time
    from engine.io.registry import resolve  # deferred: start-up time
    from engine.io.run_dir import check_writable, new_run_id, runs_root  # deferred: start-up time
    sets = sets_of(args)
    if args.resume is not None:   # `--resume ""` is a mistake, not a new run
        plan = resuming.plan(args.resume, args.name, config_given=bool(args.config))
        entry, recipe, cfg = resolve(args.name, recipes=args.recipes, config_file=args.config,
                                     sets=sets, base=plan.base_config,
                                     base_source=plan.base_source)
        plan.check_epochs(cfg, f"--resume {args.resume}")
        if plan.finished(cfg):
            _say_not_applied(plan, cfg)
            if plan.epochs_done < cfg.train.epochs:
                print(f"run {plan.run_dir or args.resume} was ended by early stopping after "
                      f"{plan.epochs_done} epochs: nothing to do (raise "
                      f"train.early_stopping_patience with --set to go on)")
            else:
                print(f"run {plan.run_dir or args.resume} already completed "
                      f"{plan.epochs_done} of {cfg.train.epochs} epochs: nothing to do "
                      f"(raise it with --set train.epochs=N)")
            return EXIT_OK
        run_dir = plan.run_dir
        checkpoint = plan.checkpoint
    else:
        entry, recipe, cfg = resolve(args.name, recipes=args.recipes, config_file=args.config,
                                     sets=sets)
        run_dir, checkpoint = None, None
    if run_dir is None:
        root = runs_root(cfg.train.output_dir, entry.name)
        check_writable(root, cfg.train.output_dir)
        run_dir = root / new_run_id()

    @listens_to(Event.FIT_START)
    def announce(event: Any, state: Any) -> None:
        if state.run.rank == 0:   # under torchrun every rank runs this verb: say it once
            print(f"run directory: {state.run.run_dir}", flush=True)

    result = fit(recipe, cfg, run_dir=run_dir, callbacks=(announce,), resume=checkpoint,
                 name=entry.name)
    return _report(result, entry.name)


def _say_not_applied(plan: Any, cfg: Any) -> None:
    from engine.core.config import to_dict  # deferred: start-up time
    keys = plan.not_applied(to_dict(cfg))
    if keys:
        print(f"warning: the run has nothing left to do, so these settings are not applied: "
              f"{', '.join(keys)}", file=sys.stderr)


def _report(result: Any, name: str) -> int:
    """The end of `run` on stderr, and its exit code."""
    quiet = result.state is not None and result.state.run.rank != 0   # torchrun: rank 0 says it
    if result.status == "failed" and not quiet:
        print(f"error: training failed: {result.error['message']}\n"
              f"  where: {result.run_dir}/metrics.json (status failed; checkpoints from before "
              f"are intact)", file=sys.stderr)
    if result.status == "failed":
        return EXIT_FAILED
    if result.status == "interrupted" and not quiet:
        if result.state is not None and result.state.checkpoint_path is None \
                and not (result.run_dir / "metrics.json").exists():
            print("stopped by a signal before the first step: nothing was written",
                  file=sys.stderr)
        else:
            print(f"stopped by a signal; resume with: python -m engine run {name} --resume "
                  f"{result.run_dir}", file=sys.stderr)
    if result.status == "interrupted":
        return EXIT_SIGNAL
    return EXIT_OK
