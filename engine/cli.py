"""`python -m engine VERB ...`: verbs, exit codes and error rendering.

Exit codes: 0 done (early stopping included); 1 training failed; 2 a user error (one message
per mistake on stderr, no traceback unless --debug or ENGINE_DEBUG=1); 130 stopped by a signal
after writing a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from engine.errors import UserError, UserErrors

EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_SIGNAL = 0, 1, 2, 130


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # accepted before or after the verb: the sub-parser's default must not erase the top's
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--recipes", metavar="FILE", default=default,
                        help="recipes.toml to use (default: found from the current folder up)")
    parser.add_argument("--debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="show tracebacks")


def _config_options(parser: argparse.ArgumentParser, output: bool = False) -> None:
    parser.add_argument("name", metavar="NAME", help="recipe name in recipes.toml")
    parser.add_argument("--config", metavar="FILE", help="TOML file with the recipe's tables")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                        help="override one config value, e.g. train.epochs=3 (repeatable)")
    if output:
        parser.add_argument("--output-dir", metavar="DIR",
                            help="same as --set train.output_dir=DIR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="Train registered recipes.")
    _common(parser, top=True)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("list", help="list the registered recipes")
    _common(p, top=False)
    p = verbs.add_parser("show", help="print a recipe's resolved config as TOML")
    _config_options(p)
    _common(p, top=False)
    p = verbs.add_parser("run", help="train a recipe")
    _config_options(p, output=True)
    p.add_argument("--resume", metavar="PATH", help="a run directory or a checkpoint to continue")
    _common(p, top=False)
    p = verbs.add_parser("check", help="check a recipe before training")
    _config_options(p)
    _common(p, top=False)
    p = verbs.add_parser("new", help="write a new recipe from a template")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--kind", required=True, metavar="KIND",
                   help="autoencoder, transformer, ranking or cnn")
    _common(p, top=False)
    p = verbs.add_parser("diagnose", help="read a run and say why it does (not) converge")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="findings as JSON")
    _common(p, top=False)
    p = verbs.add_parser("lr-find", help="learning-rate range test")
    _config_options(p, output=True)
    _common(p, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("ENGINE_DEBUG", "") not in ("", "0")
    try:
        return VERBS[args.verb](args)
    except (UserError, UserErrors) as exc:
        if debug:
            traceback.print_exc()
        print(exc.render(), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("stopped by a second signal; the files on disk are whole", file=sys.stderr)
        return EXIT_SIGNAL
    except Exception as exc:
        from engine.loop import RecipeFailed
        if isinstance(exc, RecipeFailed):
            if debug:
                traceback.print_exc()
            print(f"error: training failed: {exc}", file=sys.stderr)
            run_dir = exc.result.run_dir
            if run_dir is not None:
                print(f"  where: {run_dir}/train.log (traceback)", file=sys.stderr)
            return EXIT_FAILED
        raise


# --- verbs -------------------------------------------------------------------------------------

def cmd_list(args: Any) -> int:
    from engine.registry import find_registry, read_registry
    entries = read_registry(find_registry(args.recipes))
    width = max((len(n) for n in entries), default=0)
    for name, entry in entries.items():
        print(f"{name:<{width}}  {entry.description}".rstrip())
    return EXIT_OK


def cmd_show(args: Any) -> int:
    from engine.config import to_toml
    from engine.registry import resolve
    _, _, cfg = resolve(args.name, recipes=args.recipes, config_file=args.config, sets=args.sets)
    sys.stdout.write(to_toml(cfg))
    return EXIT_OK


def _sets(args: Any) -> list[str]:
    sets = list(args.sets)
    if getattr(args, "output_dir", None):
        sets.append(f"train.output_dir={_toml_string(args.output_dir)}")
    return sets


def _toml_string(text: str) -> str:
    import json
    return json.dumps(text)   # a JSON string is a valid TOML basic string


def cmd_run(args: Any) -> int:
    from engine import resume as resuming
    from engine.events import Event, listens_to
    from engine.loop import fit
    from engine.registry import resolve
    from engine.runs import new_run_id, runs_root

    sets = _sets(args)
    if args.resume:
        plan = resuming.plan(args.resume, args.name)
        entry, recipe, cfg = resolve(args.name, recipes=args.recipes, config_file=args.config,
                                     sets=sets, base=plan.base_config,
                                     base_source=plan.base_source)
        if plan.finished(cfg):
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
        _check_writable(root, cfg.train.output_dir)
        run_dir = root / new_run_id()

    @listens_to(Event.FIT_START)
    def announce(event: Any, state: Any) -> None:
        if state.run.rank == 0:   # under torchrun every rank runs this verb: say it once
            print(f"run directory: {state.run.run_dir}", flush=True)

    result = fit(recipe, cfg, run_dir=run_dir, callbacks=(announce,), resume=checkpoint,
                 name=entry.name)
    quiet = result.state is not None and result.state.run.rank != 0   # torchrun: rank 0 says it
    if result.status == "failed" and not quiet:
        print(f"error: training failed: {result.error['message']}\n"
              f"  where: {result.run_dir}/metrics.json (status failed; checkpoints from before "
              f"are intact)", file=sys.stderr)
    if result.status == "failed":
        return EXIT_FAILED
    if result.status == "interrupted" and not quiet:
        print(f"stopped by a signal; resume with: python -m engine run {entry.name} --resume "
              f"{result.run_dir}", file=sys.stderr)
    if result.status == "interrupted":
        return EXIT_SIGNAL
    return EXIT_OK


def _check_writable(root: Path, output_dir: str) -> None:
    """Fail before training when the runs folder cannot be made; create nothing (fit makes the
    run directory only once the preflight passed)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable by this user"
    if problem:
        raise UserError("the output directory cannot be written",
                        where=f'train.output_dir = "{output_dir}"',
                        expected="a folder this user can create files in", found=problem)


def cmd_check(args: Any) -> int:
    from engine import preflight
    return preflight.cli(args.name, recipes=args.recipes, config_file=args.config,
                         sets=args.sets)


def cmd_new(args: Any) -> int:
    from engine import scaffold
    from engine.registry import FILENAME, find_registry
    named = args.recipes or os.environ.get("ENGINE_RECIPES")
    if named:
        registry = Path(named)   # `new` creates the file when it does not exist yet
    else:
        try:
            registry = find_registry()
        except UserError:
            registry = Path.cwd() / FILENAME
    return scaffold.cli(args.name, args.kind, registry)


def cmd_diagnose(args: Any) -> int:
    from engine import diagnose
    return diagnose.cli(args.run_dir, args.json)


def cmd_lr_find(args: Any) -> int:
    from engine import lr_find
    return lr_find.cli(args.name, recipes=args.recipes, config_file=args.config,
                       sets=args.sets, output_dir=args.output_dir)


VERBS = {"list": cmd_list, "show": cmd_show, "run": cmd_run, "check": cmd_check,
         "new": cmd_new, "diagnose": cmd_diagnose, "lr-find": cmd_lr_find}
