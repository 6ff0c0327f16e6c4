"""The run's writer thread: files in the order handed over, a rewrite queued behind an older
one written once, the first failure raised once, naming the file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.io import file_writer
from engine.io.file_writer import FileWriter


@pytest.fixture
def gated(monkeypatch):
    """The writer's atomic_write_bytes held at its first call until `gate` is set; `written`
    lists (path name, bytes) in the order they reached the disk."""
    gate, entered, written = threading.Event(), threading.Event(), []
    real = file_writer.atomic_write_bytes

    def write(path, data):
        if not entered.is_set():
            entered.set()
            assert gate.wait(10)
        real(path, data)
        written.append((Path(path).name, data))

    monkeypatch.setattr(file_writer, "atomic_write_bytes", write)
    return gate, entered, written


def test_a_file_rewritten_later_in_the_queue_is_written_once_with_its_newest_bytes(
        tmp_path, gated):
    gate, entered, written = gated
    writer = FileWriter()
    writer.write(tmp_path / "config.toml", b"config")
    assert entered.wait(10)   # the writer is busy: what follows queues up behind it
    for epoch in range(5):
        writer.write(tmp_path / "metrics.json", b"epoch %d" % epoch)
        writer.write(tmp_path / "train.csv", b"row %d" % epoch)
    writer.unlink(tmp_path / "gone.txt")
    writer.write(tmp_path / "metrics.json", b"completed")
    gate.set()
    writer.close()
    assert written == [("config.toml", b"config"), ("train.csv", b"row 4"),
                       ("metrics.json", b"completed")]
    assert (tmp_path / "metrics.json").read_bytes() == b"completed"
    assert (tmp_path / "train.csv").read_bytes() == b"row 4"


def test_writes_not_superseded_land_in_order(tmp_path, gated):
    gate, _, written = gated
    gate.set()
    writer = FileWriter()
    for i in range(4):
        writer.write(tmp_path / "metrics.json", b"v%d" % i)
        writer.flush()   # nothing queued behind it: each version is written
    writer.close()
    assert [data for _, data in written] == [b"v0", b"v1", b"v2", b"v3"]


def test_a_failed_write_is_raised_once_naming_the_file_not_its_temporary(tmp_path):
    (tmp_path / "config.toml").mkdir()   # a folder where the file goes
    writer = FileWriter()
    writer.write(tmp_path / "config.toml", b"x")
    writer.write(tmp_path / "metrics.json", b"{}")   # later files are still written
    with pytest.raises(IsADirectoryError) as caught:
        writer.flush()
    assert caught.value.filename == str(tmp_path / "config.toml")
    writer.close()   # reported once
    assert (tmp_path / "metrics.json").read_bytes() == b"{}"
    assert not list(tmp_path.glob("*.tmp"))
