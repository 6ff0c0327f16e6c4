"""The run's log: beautilog, imported only when a run starts and pointed at the run directory.

beautilog configures the root logger when first imported (console on stdout, a file handler);
a second run in the same process moves its file handler to the new run's train.log.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

from engine.io.files import atomic_write_text

LOGGER = logging.getLogger("engine")

_INI = """[logger]
name = root
save_to_file = true
log_level = INFO
suppress_existing_loggers = false
disabled_loggers = []

[file_logger]
log_file_path = train.log
backup_count = 5
max_bytes = 104857600
log_level = DEBUG

[level_colors]
CRITICAL = RED
ERROR = BRIGHT_RED
WARNING = YELLOW
INFO = RESET
DEFAULT = RESET
"""


def start(run_dir: Path, files: Any = None) -> None:
    """Send the log to `run_dir/train.log` (and the console); write `run_dir/beautilog.ini`
    (by `files`, the run's FileWriter, when given and beautilog need not read it now)."""
    ini = run_dir / "beautilog.ini"
    log_path = str((run_dir / "train.log").resolve())
    root = logging.getLogger()
    set_up = hasattr(root, "update_log_file_path")   # beautilog imported by an earlier run
    if set_up and files is not None:   # a record of the settings: the run's writer writes it
        files.write(ini, _INI.encode("utf-8"))
    else:   # the first run's: beautilog reads it on import, now
        atomic_write_text(ini, _INI)
    if set_up:
        root.update_log_file_path(log_path)
    else:
        previous = os.environ.get("BEAUTILOG_CONFIG_PATH")
        os.environ["BEAUTILOG_CONFIG_PATH"] = str(ini.resolve())
        try:
            import beautilog  # noqa: F401  (configures the root logger on import)
        finally:
            if previous is None:
                os.environ.pop("BEAUTILOG_CONFIG_PATH", None)
            else:
                os.environ["BEAUTILOG_CONFIG_PATH"] = previous
    _plain_console_unless_terminal()
    _console_to_current_stdout()
    _plain_file_handler(log_path)
    for noisy in ("matplotlib", "PIL", "torch._dynamo", "torch._inductor"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    LOGGER.setLevel(logging.INFO)


def _plain_console_unless_terminal() -> None:
    # beautilog wraps every console line in ANSI colour codes; in a file or a pipe they are noise
    if sys.stdout.isatty():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "ColoredConsoleHandler":
            plain = logging.StreamHandler(handler.stream)
            plain.setFormatter(handler.formatter)
            plain.setLevel(handler.level)
            root.removeHandler(handler)
            root.addHandler(plain)


def _console_to_current_stdout() -> None:
    # beautilog's console writes to the sys.stdout of its import: a later run in the same
    # process (a notebook cell, redirect_stdout, a test capturing output) would write to a
    # stream that may be closed since ("Logging error ... I/O operation on closed file")
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if type(stream).__name__ == "TqdmStream":
            stream.file = sys.stdout


def _plain_file_handler(log_path: str) -> None:
    # beautilog's RotatingFileHandler checks for a rollover on every line (two stats of
    # train.log, a second formatting, a seek: half of a line's CPU in a fit, 98 -> 51 us),
    # and its rotation would delete a long run's oldest lines. A run's log is one file: a
    # plain handler writes and flushes.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (type(handler) is logging.handlers.RotatingFileHandler
                and handler.baseFilename == log_path):
            plain = logging.FileHandler(log_path, mode="a", encoding="utf-8")
            plain.setFormatter(handler.formatter)
            plain.setLevel(handler.level)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(plain)


def file_handler(run_dir: Path) -> logging.Handler | None:
    """The logging handler writing `run_dir`'s train.log, if one is open."""
    target = str((run_dir / "train.log").resolve())
    for handler in logging.getLogger().handlers:
        if getattr(handler, "baseFilename", None) == target:
            return handler
    return None


def write_to_file(run_dir: Path, text: str) -> None:
    """Text for train.log only (a traceback: the console shows one line, the file all)."""
    handler = file_handler(run_dir)
    if handler is not None and getattr(handler, "stream", None) is not None:
        handler.acquire()
        try:
            handler.stream.write(text if text.endswith("\n") else text + "\n")
            handler.flush()
        finally:
            handler.release()
    else:
        with open(run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(text)


def stop(run_dir: Path) -> None:
    """Close this run's file handler so nothing more flows into its train.log."""
    handler = file_handler(run_dir)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
