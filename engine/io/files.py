"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one.

Each write goes to `NAME.<pid>.<random><n>.tmp` in the same folder (ending in `.tmp`, so that
a glob for `*.pt` or `*.json` never picks it up; unique, so that two processes writing one
file, every rank of a torchrun job filling one cache, say, never share a temporary file), is
written and fsynced, then renamed over `NAME`; the folder is fsynced so the rename itself
survives a power cut. The last rename wins; each reader sees one whole file.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import secrets
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems refuse to open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Names:
    """This process's id and a random token, read once (and again in a forked child), and a
    counter: a temporary name costs no system call (getpid, getrandom) on the writer's path."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.count = itertools.count()


_NAMES = _Names()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_NAMES.renew)


def temporary_name(path: Path) -> Path:
    """`NAME.<pid>.<random><n>.tmp` beside `path`: no other writer, in this process (the
    counter) or another (the pid, and the random token for other machines on a shared file
    system), picks the same one."""
    return path.with_name(f"{path.name}.{_NAMES.prefix}{next(_NAMES.count)}.tmp")


def _write_synced(tmp: Path, data: bytes | memoryview) -> None:
    """`data` into a new file `tmp`, fsynced: four system calls (open, write, fsync, close)
    where a buffered file object makes seven."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    try:
        view = memoryview(data).cast("B")
        while view:   # one call, unless the kernel takes less (over 2 GiB, a signal)
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it into place: a
    kill leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        # a failed write (a full disk, a signal) leaves no temporary behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_shared(paths: list[Path], data: bytes | memoryview,
                        before_last: tuple[tuple[Path, bytes | memoryview], ...] = ()) -> None:
    """`data` to every path of `paths`, in order, each atomically, written and fsynced once:
    each path but the last gets a hard link of the one file (renamed into place, so a reader
    sees the old file or the new one), the last gets the file itself. A file system without
    hard links gets a copy per path. `before_last`: other (path, bytes) written (atomically)
    before the last path. A checkpoint's best.pt, last.pt and epoch file share the bytes, and
    model.pt lands before last.pt; renaming a new last.pt over the old one later leaves
    best.pt's bytes untouched. The shared file is made read-only (as git does with its
    objects): a `torch.save` over last.pt in place, which would change best.pt too, is refused
    (for users other than root)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        for other, other_data in before_last:
            atomic_write_bytes(other, other_data)
        atomic_write_bytes(paths[0], data)
        return
    tmp = temporary_name(paths[-1])
    try:
        _write_synced(tmp, data)
        if os.name == "posix":   # elsewhere a read-only file cannot be renamed over
            os.chmod(tmp, 0o444)
        for path in paths[:-1]:
            _link_into_place(tmp, path, data)
        for other, other_data in before_last:
            atomic_write_bytes(other, other_data)
        os.replace(tmp, paths[-1])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(p.parent for p in paths):
        _fsync_dir(folder)


def _link_into_place(source: Path, path: Path, data: bytes | memoryview) -> None:
    link = temporary_name(path)
    try:
        os.link(source, link)
    except OSError:   # no hard links here (some network and FAT file systems): a copy
        atomic_write_bytes(path, data)
        return
    try:
        os.replace(link, path)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """`atomic_write_bytes` of indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """`torch.save(obj)` written atomically."""
    buffer = io.BytesIO()
    import torch  # deferred: the plot helper process writes files and must not load torch

    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the `NAME....tmp` files that a killed write left in a run directory (and its
    `checkpoints/`); a resumed run calls it, so no half-written file outlives the kill."""
    folder = Path(folder)
    removed = []
    for sub in (folder, folder / "checkpoints"):
        for path in sub.glob("*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
