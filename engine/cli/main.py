"""`python -m engine VERB ...`: the parser, dispatch, exit codes and error rendering.

Exit codes: 0 done (early stopping included); 1 training failed; 2 a user error (one message
per mistake on stderr, no traceback unless --debug or ENGINE_DEBUG=1); 130 stopped by a signal
after writing a resumable checkpoint. A new verb is a module with `add(verbs) -> {name: cmd}`
listed in VERB_MODULES.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from engine.cli import run_verbs, study_verbs, tool_verbs, verbs
from engine.cli.args import common
from engine.cli.exits import EXIT_FAILED, EXIT_SIGNAL, EXIT_USER
from engine.core.errors import UserError, UserErrors

VERB_MODULES = (verbs, tool_verbs, run_verbs, study_verbs)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and the verb table {name: cmd(args) -> exit code}."""
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="Train registered recipes.")
    common(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    table: dict = {}
    for module in VERB_MODULES:
        table.update(module.add(sub))
    return parser, table


def main(argv: list[str] | None = None) -> int:
    """`python -m engine ARGS`: run the verb, render user errors; the exit code."""
    parser, table = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("ENGINE_DEBUG", "") not in ("", "0")
    try:
        return table[args.verb](args)
    except (UserError, UserErrors) as exc:
        if debug:
            traceback.print_exc()
        print(exc.render(), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("stopped by a second signal; the files on disk are whole", file=sys.stderr)
        return EXIT_SIGNAL
    except Exception as exc:
        # deferred: the loop (and torch) load only for the verbs that train
        from engine.io.fit import RecipeFailed
        if isinstance(exc, RecipeFailed):
            if debug:
                traceback.print_exc()
            print(f"error: training failed: {exc}", file=sys.stderr)
            run_dir = exc.result.run_dir
            if run_dir is not None:
                print(f"  where: {run_dir}/train.log (traceback)", file=sys.stderr)
            return EXIT_FAILED
        raise
