"""Options every verb shares, and the config options of the verbs that resolve a recipe."""

from __future__ import annotations

import argparse
import json
from typing import Any


def common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--recipes and --debug, accepted before or after the verb."""
    # the sub-parser's default must not erase the top's
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--recipes", metavar="FILE", default=default,
                        help="recipes.toml to use (default: found from the current folder up)")
    parser.add_argument("--debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="show tracebacks")


def config_options(parser: argparse.ArgumentParser, output: bool = False,
                   name: bool = True) -> None:
    """NAME, --config FILE, --set KEY=VALUE (and --output-dir DIR)."""
    if name:
        parser.add_argument("name", metavar="NAME", help="recipe name in recipes.toml")
    parser.add_argument("--config", metavar="FILE", help="TOML file with the recipe's tables")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                        help="override one config value, e.g. train.epochs=3 (repeatable)")
    if output:
        parser.add_argument("--output-dir", metavar="DIR",
                            help="same as --set train.output_dir=DIR")


def sets_of(args: Any) -> list[str]:
    """The --set flags, with --output-dir DIR as `train.output_dir="DIR"` last."""
    sets = list(args.sets)
    if getattr(args, "output_dir", None):
        # a JSON string is a valid TOML basic string
        sets.append(f"train.output_dir={json.dumps(args.output_dir)}")
    return sets
