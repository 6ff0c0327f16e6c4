"""The verbs over past runs: runs (list them) and compare (what differs between some)."""

from __future__ import annotations

from typing import Any

from engine.cli.args import common


def add(verbs: Any) -> dict:
    """Add runs and compare to the verb sub-parsers; their handlers."""
    p = verbs.add_parser("runs", help="list past runs, newest first (studies' runs included)")
    p.add_argument("name", metavar="NAME", nargs="?", help="only this recipe's runs")
    p.add_argument("--output-dir", metavar="DIR", help="where the runs are (default: artifacts)")
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    common(p)
    p = verbs.add_parser("compare", help="config differences, best figures and curves of runs")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="two run directories or more")
    p.add_argument("--output", metavar="FILE",
                   help="the picture (default: artifacts/compare/{timestamp}.png; never "
                   "overwritten)")
    common(p)
    return {"runs": cmd_runs, "compare": cmd_compare}


def cmd_runs(args: Any) -> int:
    """`runs [NAME]`: every past run, studies' included, newest first (a table, or --json)."""
    from engine.tools import runs  # deferred: start-up time
    return runs.cli(args.name, args.output_dir, args.json)


def cmd_compare(args: Any) -> int:
    """`compare RUN_DIR...`: the config keys that differ, best figures side by side, curves
    overlaid."""
    from engine.tools import compare  # deferred: start-up time
    return compare.cli(args.run_dirs, args.output)
