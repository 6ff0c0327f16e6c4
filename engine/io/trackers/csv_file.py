"""The csv tracker: RUN_DIR/metrics.csv, one row per validation, the history's columns.

Rewritten whole (atomically) after each validation from the history in memory, so a column that
first appears late, or a resumed run, still gives one rectangular table.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from engine.core.events import Event
from engine.io.files import atomic_write_text


def make(run: Any) -> CsvWriter:
    """The csv tracker for a run (`train.loggers` names "csv")."""
    return CsvWriter()


def table(history: dict) -> str:
    """The history as CSV text: a header of its columns, then one line per validation."""
    columns = list(history)
    rows = zip(*(history[c] for c in columns))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow("" if v is None else repr(v) if isinstance(v, float) else v
                        for v in row)
    return out.getvalue()


class CsvWriter:
    """RUN_DIR/metrics.csv: one row per validation, the history's columns, rewritten atomically."""
    events = frozenset({Event.VALIDATION_END})

    def __call__(self, event: Event, state: Any) -> None:
        atomic_write_text(state.run.run_dir / "metrics.csv", table(dict(state.history)))
