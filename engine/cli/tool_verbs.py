"""The verbs around a run: check, new, diagnose, lr-find."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.cli.args import common, config_options
from engine.core.errors import UserError


def add(verbs: Any) -> dict:
    """Add check, new, diagnose and lr-find to the verb sub-parsers; their handlers."""
    p = verbs.add_parser("check", help="check a recipe before training")
    config_options(p)
    common(p)
    p = verbs.add_parser("new", help="write a new recipe from a template, or wired to your "
                         "model and dataset classes (--model, --dataset)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--kind", metavar="KIND", help="autoencoder, transformer, ranking or cnn "
                   "(with --model: inferred when not given; also mlp)")
    p.add_argument("--model", metavar="MOD:CLASS", help="your nn.Module class")
    p.add_argument("--dataset", metavar="MOD:CLASS", help="your Dataset class")
    p.add_argument("--map", action="append", default=[], dest="maps",
                   metavar="FORWARD_ARG=BATCH_KEY", help="which batch field feeds a parameter "
                   "of forward (or target=KEY); repeatable")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="with --model: a value of train., model. or data.; repeatable")
    common(p)
    p = verbs.add_parser("diagnose", help="read a run and say why it does (not) converge")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="findings as JSON")
    common(p)
    p = verbs.add_parser("lr-find", help="learning-rate range test")
    config_options(p, output=True)
    common(p)
    return {"check": cmd_check, "new": cmd_new, "diagnose": cmd_diagnose,
            "lr-find": cmd_lr_find}


def cmd_check(args: Any) -> int:
    """`check NAME`: every preflight check, one line each; 0 when none failed."""
    from engine.tools import check  # deferred: start-up time
    return check.cli(args.name, recipes=args.recipes, config_file=args.config,
                         sets=args.sets)


def cmd_new(args: Any) -> int:
    """`new NAME --kind KIND`: write a recipe from a template and register it."""
    from engine.io.registry import FILENAME, find_registry  # deferred: start-up time
    from engine.tools import new as scaffold  # deferred: start-up time
    named = args.recipes or os.environ.get("ENGINE_RECIPES")
    if named:
        registry = Path(named)   # `new` creates the file when it does not exist yet
    else:
        try:
            registry = find_registry()
        except UserError:
            registry = Path.cwd() / FILENAME
    if args.model or args.dataset:
        from engine.tools import new_from_code  # deferred: start-up time
        missing = [flag for flag, v in (("--model", args.model), ("--dataset", args.dataset))
                   if not v]
        if missing:
            raise UserError(f"new needs {missing[0]} with "
                            f"{'--dataset' if missing[0] == '--model' else '--model'}",
                            where="engine new " + args.name, expected="--model MOD:CLASS "
                            "--dataset MOD:CLASS", found=f"no {missing[0]}")
        return new_from_code.cli(args.name, args.model, args.dataset, args.kind, args.maps,
                                 args.sets, registry)
    if args.kind is None:
        raise UserError("new needs --kind, or --model and --dataset",
                        where="engine new " + args.name, expected="--kind {autoencoder,"
                        "transformer,ranking,cnn}, or --model MOD:CLASS --dataset MOD:CLASS",
                        found="neither")
    if args.maps or args.sets:
        raise UserError("--map and --set need --model and --dataset", where="engine new "
                        + args.name, expected="--kind alone, or --model and --dataset",
                        found="--kind with --map/--set")
    return scaffold.cli(args.name, args.kind, registry)


def cmd_diagnose(args: Any) -> int:
    """`diagnose RUN_DIR`: what a run's history says, and what to try."""
    from engine.tools import diagnose  # deferred: start-up time
    return diagnose.cli(args.run_dir, args.json)


def cmd_lr_find(args: Any) -> int:
    """`lr-find NAME`: a learning-rate range test in a new folder."""
    from engine.tools import lr_find  # deferred: start-up time
    return lr_find.cli(args.name, recipes=args.recipes, config_file=args.config,
                       sets=args.sets, output_dir=args.output_dir)
