"""One checkpoint's bytes written once for best.pt, epoch files and last.pt (hard links), and
the first checkpoint's safety judged by a walk before torch.load is asked."""

from __future__ import annotations

import collections
import io
import os
import stat

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.io import files
from engine.io.checkpointer import _plainly_safe


def test_shared_paths_hold_the_bytes_and_outlive_a_new_last(tmp_path):
    best, last, model = tmp_path / "best.pt", tmp_path / "last.pt", tmp_path / "model.pt"
    files.atomic_write_shared([best, last], b"epoch 1", ((model, b"weights 1"),))
    assert best.read_bytes() == last.read_bytes() == b"epoch 1"
    assert model.read_bytes() == b"weights 1"
    assert os.stat(best).st_ino == os.stat(last).st_ino
    # the shared file is read-only: an in-place write would change both names
    assert not os.stat(last).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    files.atomic_write_shared([last], b"epoch 2")
    assert best.read_bytes() == b"epoch 1" and last.read_bytes() == b"epoch 2"
    assert not list(tmp_path.glob("*.tmp"))


def test_without_hard_links_each_path_gets_a_copy(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    paths = [tmp_path / "best.pt", tmp_path / "epoch-0001.pt", tmp_path / "last.pt"]
    files.atomic_write_shared(paths, b"bytes")
    assert [p.read_bytes() for p in paths] == [b"bytes"] * 3
    assert len({os.stat(p).st_ino for p in paths}) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_write_leaves_the_old_files_and_no_temporary(tmp_path, monkeypatch):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    files.atomic_write_shared([best, last], b"old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        files.atomic_write_shared([best, last], b"new")
    assert best.read_bytes() == last.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.tmp"))


_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
    st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.device("cpu"),
                     torch.Size([2, 3])]),
    st.builds(lambda n, dt: torch.arange(n).to(dt), st.integers(0, 4),
              st.sampled_from([torch.float32, torch.float16, torch.bool, torch.complex64])))
_keys = st.one_of(st.text(max_size=4), st.integers(-3, 3))
_values = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(_keys, inner, max_size=3),
    st.dictionaries(_keys, inner, max_size=3).map(collections.OrderedDict)), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_what_the_walk_calls_safe_loads_with_weights_only(value):
    """The walk is a shortcut, never a loosening: whatever it passes, weights_only loads."""
    if _plainly_safe(value):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)


def test_the_walk_leaves_objects_to_torch_load():
    class Opaque:
        pass

    assert _plainly_safe({"model": {"w": torch.zeros(2)}, "loop": {"epoch": 3, "h": [1.0]}})
    for value in ({"state": Opaque()}, {"s": {1, 2}}, [torch.nn.Parameter(torch.zeros(1))],
                  {"sparse": torch.zeros(2, 2).to_sparse()}):
        assert not _plainly_safe(value)
