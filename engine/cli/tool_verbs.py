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
    p = verbs.add_parser("new", help="write a new recipe from a template")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--kind", required=True, metavar="KIND",
                   help="autoencoder, transformer, ranking or cnn")
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
    from engine.tools import check
    return check.cli(args.name, recipes=args.recipes, config_file=args.config,
                         sets=args.sets)


def cmd_new(args: Any) -> int:
    """`new NAME --kind KIND`: write a recipe from a template and register it."""
    from engine.io.registry import FILENAME, find_registry
    from engine.tools import new as scaffold
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
    """`diagnose RUN_DIR`: what a run's history says, and what to try."""
    from engine.tools import diagnose
    return diagnose.cli(args.run_dir, args.json)


def cmd_lr_find(args: Any) -> int:
    """`lr-find NAME`: a learning-rate range test in a new folder."""
    from engine.tools import lr_find
    return lr_find.cli(args.name, recipes=args.recipes, config_file=args.config,
                       sets=args.sets, output_dir=args.output_dir)
