"""The engine's own record of which (configuration, replicate) is done, claimed or waiting.

    pairs/c0003-r001.json   {"configuration", "replicate", "run_id", "state", "worker", ...}

`state` is `claimed` (a worker runs it; the file's modification time is its heartbeat),
`done` (with the run's `status` and objective `value`), `interrupted` (stopped by a signal:
the next claim continues the same run from its last.pt) or `pending` (a failed run to retry).
A missing file is a pair nobody has started.

Every change is made under one study lock (`fcntl.lockf` on `lock` in the study directory:
released by the kernel when its holder dies, and honoured across machines by NFS's lock
manager), so two workers never claim the same pair. A claim whose worker is gone (on this host:
its process has ended; anywhere: no heartbeat for GRACE_S seconds) is taken over, and its run
continues from its last.pt in its own run directory. Finished runs are never claimed again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.core.errors import UserError
from engine.io.files import atomic_write_json
from engine.io.run_dir import new_run_id

GRACE_S = 60.0       # a claim with no heartbeat for this long belongs to a dead worker
HEARTBEAT_S = 5.0
OPEN_STATES = ("pending", "interrupted")    # a worker may claim these (and missing files)

_WORKER = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex[:8]}


def this_worker() -> dict:
    """Who claims: host, process id and a token (the pid may be reused after a restart)."""
    if _WORKER["pid"] != os.getpid():   # a forked process is another worker
        _WORKER.update(pid=os.getpid(), token=uuid.uuid4().hex[:8])
    return dict(_WORKER)


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study's lock for the block (other workers wait)."""
    fd = os.open(study_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def pair_path(study_dir: Path, configuration: int, replicate: int) -> Path:
    """The record file of one (configuration, replicate) under the study's pairs/."""
    return study_dir / "pairs" / f"c{configuration:04d}-r{replicate:03d}.json"


def read_pairs(study_dir: Path) -> dict[tuple[int, int], dict]:
    """Every pair record, by (configuration, replicate). A record that is not whole is a
    UserError naming its file: skipping it would run its pair a second time."""
    folder = study_dir / "pairs"
    records = {}
    for path in sorted(folder.glob("c*-r*.json")) if folder.is_dir() else ():
        record = _read_record(path)
        record["_mtime"] = path.stat().st_mtime
        records[(record["configuration"], record["replicate"])] = record
    return records


STATES = ("claimed", "done", "interrupted", "pending")


def _read_record(path: Path) -> dict:
    return read_record(path, _shape_problem, lambda found: UserError(
        "a study's pair record is damaged", where=str(path),
        expected='a JSON object {"configuration", "replicate", "state", "run_id", ...} as the '
                 'engine writes it', found=found,
        hint="restore it from a backup; or delete it, and that pair runs again in a new run "
             "directory (the old one is kept)"))


def read_record(path: Path, problem_of: Callable[[Path, object], str | None],
                damaged: Callable[[str], UserError]) -> dict:
    """A study's JSON record (a pair, a configuration), or `damaged(what is wrong)` raised:
    records are replaced by rename, so one that is not whole is damage, not a write under way.
    A network file system may still answer a read during the rename with an error: it is
    read again, briefly."""
    for attempt in range(3):
        try:
            text = path.read_text(encoding="utf-8")
            break
        except OSError as exc:
            if attempt == 2:
                raise damaged(f"unreadable ({exc.strerror or exc})") from None
            time.sleep(0.05)
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise damaged(f"not JSON ({exc})") from None
    problem = problem_of(path, record)
    if problem:
        raise damaged(problem)
    return record


def _shape_problem(path: Path, record: object) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key in ("configuration", "replicate"):
        if type(record.get(key)) is not int:
            return f"{key} = {record.get(key)!r}, not an integer"
    if path.name != pair_path(path.parent.parent, record["configuration"],
                              record["replicate"]).name:
        return (f"configuration {record['configuration']} replicate {record['replicate']}, "
                f"which is not the pair its name says")
    if record.get("state") not in STATES:
        return f"state = {record.get('state')!r}, not one of {', '.join(STATES)}"
    if record["state"] != "pending" and not isinstance(record.get("run_id"), str):
        return f"run_id = {record.get('run_id')!r}, not a run's id"
    if record["state"] == "done":
        if not isinstance(record.get("status"), str):
            return f"status = {record.get('status')!r}, not a run's status"
        value = record.get("value")
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
            return f"value = {value!r}, not a finite number or null"
    return None


def _write(study_dir: Path, record: dict) -> dict:
    record = {k: v for k, v in record.items() if not k.startswith("_")}
    path = pair_path(study_dir, record["configuration"], record["replicate"])
    path.parent.mkdir(exist_ok=True)
    atomic_write_json(path, record)
    return record


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:   # a killed child not yet reaped by its parent is a zombie: gone too
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def abandoned(record: dict, now: float | None = None) -> bool:
    """A claim whose worker is gone."""
    if record.get("state") != "claimed":
        return False
    now = time.time() if now is None else now
    if now - record.get("_mtime", now) > GRACE_S:
        return True
    worker = record.get("worker") or {}
    return worker.get("host") == socket.gethostname() and _process_gone(int(worker["pid"]))


def _claim(study_dir: Path, configuration: int, replicate: int, old: dict | None) -> dict:
    old = old or {}
    run_id = old.get("run_id") if old.get("state") in ("claimed", "interrupted") else None
    if run_id is None:
        while (study_dir / "runs" / (run_id := new_run_id())).exists():
            continue
    record = {"configuration": configuration, "replicate": replicate, "run_id": run_id,
              "state": "claimed", "worker": this_worker(),
              "claimed_at": _now(),
              "previous_runs": old.get("previous_runs", [])}
    if old.get("state") == "claimed":
        record["taken_over_from"] = old.get("worker")
    return _write(study_dir, record)


def next_pair(study_dir: Path, configurations: list[dict], replicates: int,
              new_configuration: Callable[[int], dict] | None) -> dict | None:
    """Claim the next pair to run (call under the study lock): an abandoned claim first, then
    a pair not started, then (a search with trials left) the first replicate of a new
    configuration. None when nothing is left for this worker."""
    records = read_pairs(study_dir)
    for key, record in sorted(records.items()):
        if abandoned(record):
            return _claim(study_dir, *key, record)
    for config in configurations:
        for replicate in range(replicates):
            record = records.get((config["configuration"], replicate))
            if record is None or record["state"] in OPEN_STATES:
                return _claim(study_dir, config["configuration"], replicate, record)
    if new_configuration is not None:
        config = new_configuration(len(configurations))
        return _claim(study_dir, config["configuration"], 0, None)
    return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def finish(study_dir: Path, record: dict, status: str, value: float | None,
           error: str | None = None, fit_s: float | None = None) -> dict:
    """The pair is done: its run ended `status` (completed, early_stopped, pruned, failed);
    `fit_s` is the time its worker spent inside fit."""
    done = {**record, "state": "done", "status": status, "value": value, "fit_s": fit_s,
            "finished_at": _now()}
    if error:
        done["error"] = error
    return _write(study_dir, done)


def release(study_dir: Path, record: dict) -> dict:
    """The run was interrupted: the next claim continues it from its last.pt."""
    return _write(study_dir, {**record, "state": "interrupted"})


def retry_failed(study_dir: Path) -> int:
    """Make every failed pair claimable again (a new run directory; the failed one is kept and
    listed in `previous_runs`). Call under the study lock; returns how many."""
    count = 0
    for record in read_pairs(study_dir).values():
        if record["state"] == "done" and record.get("status") == "failed":
            _write(study_dir, {"configuration": record["configuration"],
                               "replicate": record["replicate"], "state": "pending",
                               "previous_runs": [*record.get("previous_runs", []),
                                                 record["run_id"]]})
            count += 1
    return count


class Heartbeat:
    """Touches the current claim's file every HEARTBEAT_S seconds from a daemon thread."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="study-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            path = self.path
            if path is not None:
                with contextlib.suppress(OSError):
                    os.utime(path)

    def stop(self) -> None:
        """Stop beating (the claim stays as the run left it)."""
        self._stop.set()
