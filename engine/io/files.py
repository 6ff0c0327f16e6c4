"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one.

Each write goes to `NAME.<pid>.<random>.tmp` in the same folder (ending in `.tmp`, so that a
glob for `*.pt` or `*.json` never picks it up; unique, so that two processes writing one file,
every rank of a torchrun job filling one cache, say, never share a temporary file), is flushed
and fsynced, then renamed over `NAME`; the folder is fsynced so the rename itself survives a
power cut. The last rename wins; each reader sees one whole file.
"""

from __future__ import annotations

import io
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


def temporary_name(path: Path) -> Path:
    """`NAME.<pid>.<random>.tmp` beside `path`: no other writer, in this process or another,
    picks the same one."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it into place: a
    kill leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a failed write (a full disk, a signal) leaves no temporary behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
