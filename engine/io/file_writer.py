"""A run's files written off the training path: one thread per run writes them in the order
they were handed over, each atomically (engine.io.files), while the loop goes on.

The loop serialises what it hands over (a consistent snapshot: the bytes of last.pt are taken
when the checkpoint is due), so only the write, its fsync and the rename run in the thread;
fsync waits on the disk with the GIL released. A file handed over again before its older
bytes were written (metrics.json on a slow disk, or its last two versions at a run's end) is
written once, with the newest bytes. The first write that fails is kept and raised by
`check` (the checkpointer calls it at every checkpoint) or by `flush`, once: the run
fails there, naming the path and the OS error; every file written before stays whole, and
later files (metrics.json saying `failed`) are still written. `flush` (at the end of fit,
before a resume, and when an observer listens to CHECKPOINT_WRITTEN and so must find the file
on disk) returns once every write handed over is in place.
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from itertools import islice
from pathlib import Path

from engine.io.files import atomic_write_bytes, atomic_write_shared

_OPEN: set[FileWriter] = set()


class FileWriter:
    """Writes `(path, bytes)` and deletes `path` in order, on one thread started when first
    needed; `flush()` waits for all of them and raises the first failure."""

    def __init__(self) -> None:
        self._jobs: deque = deque()
        self._busy = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None
        self._closed = False

    def write(self, path: Path, data: bytes | memoryview) -> None:
        """Hand `data` over to be written to `path` (after everything handed over before)."""
        self._submit(("write", Path(path), data))

    def write_shared(self, paths: list[Path], data: bytes | memoryview,
                     before_last: tuple[tuple[Path, bytes | memoryview], ...] = ()) -> None:
        """Hand `data` over to be written once to every path of `paths`, in order (hard
        links), with `before_last` written before the last (engine.io.files.atomic_write_shared)."""
        self._submit(("shared", [Path(p) for p in paths], (data, before_last)))

    def check(self) -> None:
        """Raise the first write that failed since the last check (and only once)."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def unlink(self, path: Path) -> None:
        """Delete `path` once the writes handed over before it are done."""
        self._submit(("unlink", Path(path), None))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every job is done; raise the first write that failed."""
        with self._busy:
            self._busy.wait_for(lambda: not self._jobs, timeout)
        self.check()

    def close(self) -> None:
        """Flush, then end the thread. Interrupted (a second signal), the writer stays known to
        the exit handler, which lets it finish before the process ends."""
        try:
            self.flush()
        except OSError:
            self._stop()
            raise
        self._stop()

    def _stop(self) -> None:
        with self._busy:
            self._closed = True
            self._busy.notify_all()
        _OPEN.discard(self)

    def _submit(self, job: tuple) -> None:
        with self._busy:
            self._jobs.append(job)
            self._busy.notify_all()
        if self._thread is None or not self._thread.is_alive():   # first use, or after close
            with self._busy:
                self._closed = False
            self._thread = threading.Thread(target=self._run, name="engine-files", daemon=True)
            self._thread.start()
            _OPEN.add(self)

    def _run(self) -> None:
        while True:
            with self._busy:
                self._busy.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                kind, path, data = self._jobs[0]
                # a file rewritten later in the queue (metrics.json after each validation and
                # at the end) is written once, with its newest bytes: a slow disk never lets
                # the writer fall behind on it, and the end of a run waits for one write
                superseded = kind == "write" and any(
                    job[0] == "write" and job[1] == path for job in islice(self._jobs, 1, None))
            try:
                if superseded:
                    pass
                elif kind == "write":
                    atomic_write_bytes(path, data)
                elif kind == "shared":
                    atomic_write_shared(path, *data)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                if self._error is None:   # the first one is the one to report
                    self._error = _named(exc, path, data if kind == "shared" else None)
            with self._busy:
                self._jobs.popleft()   # only now: flush() waits for the job in progress too
                self._busy.notify_all()


def _named(exc: OSError, path: Path | list[Path], shared: tuple | None) -> OSError:
    """The error naming the file being written (config.toml), not its temporary name
    (config.toml.123.ab12cd34.tmp): what the run's failure message shows."""
    targets = [*path, *(p for p, _ in shared[1])] if shared is not None else [path]
    name = Path(exc.filename).name if exc.filename else ""
    for target in targets:
        if name == target.name or (name.startswith(target.name + ".") and name.endswith(".tmp")):
            return type(exc)(exc.errno, exc.strerror, str(target))
    return exc


def failure_message(exc: OSError, fallback: Path | str) -> str:
    """The run's failure message for a write that failed, the same wherever the run noticed
    it (at a checkpoint or at the end of fit): which kind of file, its path, the OS error."""
    where = exc.filename or fallback
    # the run's writer also writes metrics.json and config.toml: say which kind failed
    what = "a checkpoint" if str(where).endswith(".pt") else "a file of the run"
    return f"{what} could not be written: {where}: {exc.strerror or exc}"


@atexit.register
def _flush_open_writers() -> None:
    # a script that calls fit and exits at once still gets every file (the thread is a daemon,
    # so that a failing process can always exit)
    for writer in list(_OPEN):
        try:
            writer.flush(timeout=60)
        except OSError:
            pass
