"""train.log: one plain file per run, its lines in that run's file only."""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers

from engine.io import runlog


def _file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def test_each_run_logs_to_its_own_train_log_through_a_plain_file_handler(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    log = logging.getLogger("engine")
    runlog.start(first)
    try:
        handler = runlog.file_handler(first)
        # no rollover check (two stats of the file per line) and no rotation that drops lines
        assert type(handler) is logging.FileHandler, type(handler)
        log.info("a line of the first run")
    finally:
        runlog.stop(first)
    runlog.start(second)
    try:
        assert type(runlog.file_handler(second)) is logging.FileHandler
        assert runlog.file_handler(first) is None
        log.info("a line of the second run")
        runlog.write_to_file(second, "Traceback (most recent call last): ...")
    finally:
        runlog.stop(second)
    assert not [h for h in _file_handlers()
                if h.baseFilename in {str((d / "train.log").resolve()) for d in (first, second)}]
    one, two = (d / "train.log" for d in (first, second))
    assert "a line of the first run" in one.read_text()
    assert "second run" not in one.read_text()
    assert "a line of the second run" in two.read_text()
    assert two.read_text().rstrip().endswith("Traceback (most recent call last): ...")
    assert (second / "beautilog.ini").read_text().startswith("[logger]")


def test_a_later_run_logs_to_the_stdout_of_its_start_not_a_closed_earlier_one(tmp_path, capfd):
    """beautilog's console holds the sys.stdout of its import; a run started after that stream
    was closed (a notebook, redirect_stdout, pytest's capture) logs to the current one."""
    log = logging.getLogger("engine")
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            runlog.start(tmp_path / name)
            try:
                log.info("a line of the %s run", name)
            finally:
                runlog.stop(tmp_path / name)
        assert f"a line of the {name} run" in out.getvalue()
        out.close()
    assert "Logging error" not in capfd.readouterr().err
