"""The sweep's extra workers on this machine, forked from the sweep while it is still bare.

    standby = fork_standby(workers - 1, recipes)   # after the imports, before any check
    ...checks, make the study...
    procs = standby.start(study_dir)               # or standby.cancel(): nothing ran

A fresh `python -m engine sweep --worker` pays, before its first run, `import torch` (~2 s
here), the engine, Optuna and the first optimizer's import of torch._dynamo (~1.3 s); and its
first run is slower again. A fork of the sweep taken once those are loaded pays none of it,
and waits (a blocking read on a pipe, no CPU) while the sweep checks the flags and makes the
study. The fork is taken before anything the children must not share exists: no thread (the
plot helper's reader), no trial store connection (a PostgreSQL socket), no OpenMP pool (no
parallel operation has run). Each child then starts its own plot helper and opens its own
store, as a `--worker` process does.

Each worker gets its share of the cores as torch threads (cores // workers) unless the user
set OMP_NUM_THREADS: N workers with every core each would fight over them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path

# what a worker's outcome means to the process that waits for it (the CLI's exit codes)
_EXIT = {"done": 0, "failed": 1, "interrupted": 130}


def threads_per_worker(workers: int) -> int | None:
    """torch threads for each of `workers` on this machine (None: leave torch's choice: the
    user set OMP_NUM_THREADS, or one worker)."""
    if workers <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def set_threads(threads: int | None) -> None:
    """Use at most `threads` torch threads in this process."""
    import torch  # deferred: only workers that train need it
    if threads is not None and threads < torch.get_num_threads():
        torch.set_num_threads(threads)


def can_fork() -> bool:
    """Whether the workers can be forks of this process: on Linux (macOS's system frameworks
    are not safe to fork without exec, which is why Python spawns there; Windows has no fork),
    and before CUDA is initialised (a forked child cannot use it then)."""
    import torch  # deferred: only workers that train need it
    return sys.platform.startswith("linux") and not torch.cuda.is_initialized()


def warm_imports() -> None:
    """Load what every worker's first run would: the first optimizer (torch._dynamo), Optuna."""
    import torch  # deferred: only workers that train need it

    from engine.study.store import quiet_optuna
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    quiet_optuna()


def die_with_parent(parent: int) -> None:
    """In a worker process: SIGTERM when the sweep that started it (pid `parent`) dies
    (Linux); gone already: exit."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


class Forked:
    """A forked worker as `subprocess.Popen` shows one: pid, poll, send_signal, returncode."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the process has ended (None while it runs)."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the process if it still runs."""
        if self.poll() is None:
            os.kill(self.pid, sig)


class Standby:
    """Forked processes waiting for a study directory (one pipe each)."""

    def __init__(self, children: list[tuple[int, int]]) -> None:
        self._children = children   # (pid, write end of its pipe)

    def start(self, study_dir: Path) -> list[Forked]:
        """Send each waiting process the study: it becomes a worker of it. Their handles."""
        for _, fd in self._children:
            try:
                os.write(fd, (str(study_dir) + "\n").encode())
            except OSError:   # it died meanwhile: its handle's exit code says so
                pass
        return self._close()

    def cancel(self) -> None:
        """Nothing to run (a check failed): the waiting processes read the end of their pipe
        and exit without a trace."""
        for proc in self._close():
            os.waitpid(proc.pid, 0)

    def _close(self) -> list[Forked]:
        procs = []
        for pid, fd in self._children:
            os.close(fd)
            procs.append(Forked(pid))
        self._children = []
        return procs


def fork_standby(n: int, recipes: str | None, threads: int | None = None) -> Standby:
    """Fork `n` processes that wait for `Standby.start(study_dir)` and then work on that
    study as `sweep --worker` would (their output in the study's workers/ folder)."""
    parent = os.getpid()
    children = []
    for index in range(n):
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:   # the child: never returns into the sweep's code
            os.close(write)
            for _, fd in children:
                os.close(fd)
            code = 1
            try:
                code = _child(read, parent, index, recipes, threads)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(read)
        children.append((pid, write))
    return Standby(children)


def _child(read: int, parent: int, index: int, recipes: str | None,
           threads: int | None) -> int:
    os.setsid()   # a Ctrl-C meant for the sweep reaches the workers through the sweep
    die_with_parent(parent)
    with os.fdopen(read, "rb") as pipe:
        line = pipe.readline().decode().strip()
    if not line:
        return 0   # the sweep ended before making a study
    study_dir = Path(line)
    logs = study_dir / "workers"
    logs.mkdir(exist_ok=True)
    with open(logs / f"worker-{parent}-{index}.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    set_threads(threads)
    from engine.io import plot_service
    from engine.study.worker import said, work
    plot_service.service().warm()   # its matplotlib loads while the first run trains
    import torch  # deferred: only workers that train need it
    print(f"worker joins study {study_dir} (forked from the sweep, pid {parent}; "
          f"{torch.get_num_threads()} torch thread(s))", flush=True)
    return _EXIT[work(study_dir, recipes=recipes, on_done=said)]
