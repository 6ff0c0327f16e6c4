"""Atomic writes from several processes at once (issue 14): each writer has its own temporary
file, so two processes writing one file never fail and the file is always one of them, whole."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from engine.io.files import atomic_write_bytes, remove_temporaries, temporary_name

WRITES = 150


def _writer(path: str, marker: int, go, errors) -> None:
    data = bytes([marker]) * 200_000   # big enough that writes overlap
    go.wait()
    try:
        for _ in range(WRITES):
            atomic_write_bytes(path, data)
    except Exception as exc:   # reported to the parent: the test names it
        errors.put(f"writer {marker}: {type(exc).__name__}: {exc}")


def test_two_processes_writing_one_file_never_fail(tmp_path):
    """Two processes rewrite one file 150 times each at once: no write fails, the file is
    whole (all bytes one writer's) and no temporary file remains."""
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "cache.pt"
    go, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), m, go, errors)) for m in (1, 2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    assert [p.exitcode for p in procs] == [0, 0]
    data = path.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1 and data[0] in (1, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"]


def test_temporary_names_are_unique_and_end_in_tmp(tmp_path):
    """`NAME.<pid>.<random><n>.tmp`: never `*.pt` (a `*.pt` glob would load it), unique per write,
    and what remove_temporaries deletes."""
    path = tmp_path / "last.pt"
    names = {temporary_name(path).name for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith(f"last.pt.{os.getpid()}.") and name.endswith(".tmp")
        assert not Path(name).match("*.pt")
    torn = temporary_name(path)
    torn.write_bytes(b"half")
    assert remove_temporaries(tmp_path) == [torn]


def test_a_forked_child_names_its_temporaries_apart_from_its_parent(tmp_path):
    """The pid and token are read once per process: a forked child (a DataLoader worker, a
    study worker) reads its own, so parent and child never pick one temporary name."""
    path = tmp_path / "last.pt"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report its next name and leave at once
        os.write(write, temporary_name(path).name.encode())
        os._exit(0)
    os.close(write)
    child_name = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    assert child_name.startswith(f"last.pt.{pid}.")
    assert temporary_name(path).name.startswith(f"last.pt.{os.getpid()}.")


def test_a_write_the_kernel_takes_in_parts_lands_whole(tmp_path, monkeypatch):
    """os.write may take fewer bytes than it is given (over 2 GiB at once, a signal): the
    rest is written until the file is whole, and only then renamed into place."""
    real_write = os.write
    sizes = []

    def short_write(fd, data):
        sizes.append(real_write(fd, bytes(memoryview(data)[:1000])))
        return sizes[-1]

    monkeypatch.setattr(os, "write", short_write)
    data = bytes(range(256)) * 40   # 10,240 bytes: eleven writes
    atomic_write_bytes(tmp_path / "x.bin", memoryview(data))
    assert (tmp_path / "x.bin").read_bytes() == data and len(sizes) == 11
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
