"""Every file of a run arrives whole: written to a temporary file, fsynced, then renamed into
place (os.replace), so a kill at any moment leaves the old file or the new one.

The file system calls of one in-process `fit` with a run directory are recorded (os.fsync,
os.replace, os.rename, with the path each fsynced descriptor names); a plain `open(path, "w")`
of a final file, or a rename of a file never fsynced, fails here. train.log is the one file
appended to as the run goes (a log, not a record: a torn last line is all a kill can do)."""

from __future__ import annotations

import os
from pathlib import Path

import resume_recipe as rr

from engine import fit

APPENDED = {"train.log"}


def test_every_file_of_a_run_is_renamed_into_place_after_an_fsync(tmp_path, monkeypatch):
    """Each final file of a run (checkpoints, model.pt, metrics.json, config.toml, metrics.png,
    keep_last files) was last put in place by os.replace from a temporary file in the same
    folder, and that temporary file was fsynced before the rename."""
    calls: list[tuple[str, str, str]] = []
    real_fsync, real_replace, real_rename, real_link = os.fsync, os.replace, os.rename, os.link
    # metrics.png drawn in this process, so its write is seen too (the plot helper process
    # writes it with the same engine.io.files.atomic_write_bytes)
    monkeypatch.setenv("ENGINE_PLOTS", "inline")

    def fsync(fd):
        try:
            calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        except OSError:
            calls.append(("fsync", "?", ""))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        calls.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        calls.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
        return real_rename(src, dst, *a, **k)

    def link(src, dst, *a, **k):
        # best.pt, epoch files: a hard link of last.pt's fsynced temporary file
        calls.append(("link", os.path.abspath(src), os.path.abspath(dst)))
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    run_dir = tmp_path / "run"
    cfg = rr.make_cfg("train.epochs=3", "train.checkpoint_every_n_steps=2", "train.keep_last=2",
                      "train.learning_rate=0.1")
    result = fit(rr.recipe, cfg, run_dir=run_dir)
    assert result.status == "completed"

    finals = sorted(p.resolve() for p in run_dir.rglob("*") if p.is_file()
                    and p.name not in APPENDED)
    names = {p.relative_to(run_dir.resolve()).as_posix() for p in finals}
    assert {"metrics.json", "model.pt", "checkpoints/last.pt", "checkpoints/best.pt",
            "metrics.png"} <= names, names
    for final in finals:
        arrivals = [i for i, (op, _, dst) in enumerate(calls)
                    if op in ("replace", "rename") and dst == str(final)]
        assert arrivals, f"{final.name} was written in place, not renamed into place"
        i = arrivals[-1]
        op, src, _ = calls[i]
        assert op == "replace", f"{final.name}: os.rename does not replace atomically everywhere"
        assert Path(src).parent == final.parent and src != str(final), (final.name, src)
        linked = [(j, a) for j, (op2, a, b) in enumerate(calls[:i]) if op2 == "link"
                  and b == src]
        if linked:   # the link's bytes are those of the file it links, fsynced under its name
            j, src = linked[-1]
            assert Path(src).parent == final.parent, (final.name, src)
        synced = [j for j, (op2, path, _) in enumerate(calls[:i]) if op2 == "fsync"
                  and path == src]
        assert synced, f"{final.name}: {Path(src).name} was renamed before any fsync"
        # the fsync is of this write: no earlier rename of the same temporary file in between
        earlier = [j for j in arrivals[:-1] if j > synced[-1]]
        assert not earlier, f"{final.name}: the last write was not fsynced"
    assert not [p for p in run_dir.rglob("*.tmp")]
