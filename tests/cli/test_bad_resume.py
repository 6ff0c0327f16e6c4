"""`run --resume PATH` with a damaged run or a path that is no checkpoint: exit code 2, one
`error:` block naming the file, no traceback, and the run directory's files byte for byte as
they were (a refused resume writes nothing).

One finished run (`tiny` from resume_recipe, 2 epochs, keep_last 2) is trained once per module;
each case damages a copy of it and resumes the copy through `engine.cli.main` in this process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import resume_recipe as rr
import torch
from helpers import engine

from engine.cli import main


@pytest.fixture(autouse=True)
def _here(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_PLOTS", "inline")   # drawn in this process, and so patched out:
    monkeypatch.setattr("engine.io.plots.plot_metrics", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)   # a stray new run would land in ./artifacts: keep it here
    monkeypatch.delenv("ENGINE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(recipes.toml, a completed 2-epoch run with epoch-0001.pt and epoch-0002.pt), made once."""
    folder = tmp_path_factory.mktemp("bad_resume")
    registry = rr.write_registry(folder, train={"epochs": 2, "keep_last": 2})
    assert main(["run", "tiny", "--recipes", str(registry), "--output-dir",
                 str(folder / "out")]) == 0
    (run,) = rr.run_dirs(folder / "out")
    return registry, run


def files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def resume(registry: Path, path: Path | str, *extra: str) -> int:
    return main(["run", "tiny", "--recipes", str(registry), "--resume", str(path), *extra])


def one_error(err: str, fragments: list[str]) -> None:
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    for line in err.rstrip("\n").splitlines():
        assert re.match(r"^(error: |  (where|expected|found|hint): )", line), line


def _write(text: bytes):
    return lambda run, path: path.write_bytes(text)


def _torn(run, path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _folder(run, path):
    path.unlink()
    path.mkdir()


def _cut_tables(run, path):
    # cut at a line boundary: valid TOML without the [model] and [data] tables
    text = path.read_text(encoding="utf-8")
    path.write_text(text[:text.index("[model]")], encoding="utf-8")


LAST, CONFIG, METRICS = "checkpoints/last.pt", "config.toml", "metrics.json"
# (case, file damaged, damage(run, path), resume target relative to the run, fragments)
DAMAGED = [
    ("text-last", LAST, _write(b"hello\n"), "", [
        "not a checkpoint: the file is not one torch.save writes", "b'hello\\n'"]),
    ("empty-last", LAST, _write(b""), "", ["the checkpoint is an empty file", "0 bytes"]),
    ("torn-last", LAST, _torn, "", ["the file is torn", " bytes; ", "epoch-NNNN.pt"]),
    ("last-a-folder", LAST, _folder, "", ["the checkpoint is a folder, not a file"]),
    ("last-a-folder-named", LAST, _folder, LAST, ["the checkpoint is a folder, not a file"]),
    ("empty-config", CONFIG, _write(b""), "", [
        "config.toml lacks settings the run was trained with", "train.epochs"]),
    ("config-without-tables", CONFIG, _cut_tables, "", [
        "config.toml lacks settings", "model.width", "data.samples"]),
    ("torn-metrics", METRICS, _write(b'{"recipe": "ti'), "", [
        "the run's metrics.json cannot be read", "not JSON", "move metrics.json aside"]),
    ("empty-metrics", METRICS, _write(b""), "", ["metrics.json cannot be read", "not JSON"]),
    ("metrics-a-list", METRICS, _write(b"[1, 2]\n"), "", ["metrics.json", "a JSON list"]),
    ("metrics-a-folder", METRICS, _folder, "", ["metrics.json cannot be read"]),
    ("older-epoch-file", None, None, "checkpoints/epoch-0001.pt", [
        "the checkpoint is older than the run's last.pt", "epoch-0001.pt",
        "found: epoch 1, step", "to branch a new run from it"]),
    ("model-pt", None, None, "model.pt", [
        "not an engine checkpoint: the file holds weights only", "model.pt"]),
    ("checkpoints-folder", None, None, "checkpoints", [
        "nothing to resume in this folder", "hint: resume the run directory"]),
]


@pytest.mark.parametrize("case, damaged, damage, target, fragments", DAMAGED,
                         ids=[c[0] for c in DAMAGED])
def test_a_damaged_run_is_refused_and_left_as_it_was(trained, tmp_path, capsys, case, damaged,
                                                      damage, target, fragments):
    """Each damage: exit 2, one block naming the file, every file of the run unchanged."""
    registry, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    if damage is not None:
        damage(run, run / damaged)
    before = files(run)
    capsys.readouterr()
    assert resume(registry, run / target, "--set", "train.epochs=3") == 2
    one_error(capsys.readouterr().err, [*fragments, str(run / (damaged or target))])
    assert files(run) == before
    assert not (tmp_path / "artifacts").exists()


def test_an_empty_resume_path_is_no_new_run(trained, tmp_path, capsys):
    """`--resume ""` (an unset shell variable) used to start a fresh run in silence."""
    registry, _ = trained
    assert resume(registry, "") == 2
    one_error(capsys.readouterr().err, ["--resume needs a path", "found: an empty path"])
    assert not (tmp_path / "artifacts").exists()


def test_a_text_file_elsewhere_is_not_called_unsafe(trained, tmp_path, capsys):
    """A plain text x.pt: 'not a checkpoint' (it used to read 'not a safe checkpoint')."""
    registry, _ = trained
    (tmp_path / "x.pt").write_text("just some notes\n", encoding="utf-8")
    assert resume(registry, tmp_path / "x.pt") == 2
    err = capsys.readouterr().err
    one_error(err, ["not a checkpoint", str(tmp_path / "x.pt"), "b'just some notes"])
    assert "safe" not in err
    assert not (tmp_path / "artifacts").exists()


def test_a_checkpoint_elsewhere_without_its_config_is_refused(trained, tmp_path, capsys):
    """A checkpoint with no stored config would start a new run from the recipe's defaults."""
    registry, run = trained
    data = torch.load(run / LAST, map_location="cpu", weights_only=True)
    del data["config"]
    torch.save(data, tmp_path / "bare.pt")
    assert resume(registry, tmp_path / "bare.pt", "--set", "train.epochs=3") == 2
    one_error(capsys.readouterr().err, ["holds no config", str(tmp_path / "bare.pt"),
                                        "--config"])
    assert not (tmp_path / "artifacts").exists()


def _read_only(folder: Path) -> list[list[str]] | None:
    """Make `folder` unwritable; the commands that undo it, or None where this user cannot.
    root ignores permission bits, but not the immutable attribute."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return [["chmod", "755", str(folder)]]
    if shutil.which("chattr") is None:
        return None
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    return [["chattr", "-i", str(folder)]] if done.returncode == 0 else None


def test_a_read_only_run_directory_is_refused_before_training(trained, tmp_path, capsys):
    """It used to train an epoch, then fail (exit 1) on the first write."""
    registry, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    before = files(run)
    undo = _read_only(run)
    if undo is None:
        pytest.skip("no way to make a folder read-only for this user here")
    try:
        capsys.readouterr()
        assert resume(registry, run, "--set", "train.epochs=3") == 2
    finally:
        for command in undo:
            subprocess.run(command, check=True)
    one_error(capsys.readouterr().err, ["the run directory cannot be written", str(run),
                                        "not writable"])
    assert files(run) == before


def test_the_run_is_recovered_from_an_older_checkpoint_when_last_pt_is_torn(trained, tmp_path,
                                                                           capsys):
    """The older-checkpoint refusal stands aside when last.pt cannot be read."""
    registry, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    _torn(run, run / LAST)
    assert resume(registry, run / "checkpoints" / "epoch-0002.pt", "--set",
                  "train.epochs=3") == 0
    assert torch.load(run / LAST, weights_only=True)["loop"]["epoch"] == 3


def test_a_finished_run_says_which_settings_it_does_not_apply(trained, tmp_path, capsys):
    """Nothing to do (exit 0, nothing written), and a --set that would change the model is
    named rather than dropped in silence."""
    registry, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    before = files(run)
    capsys.readouterr()
    assert resume(registry, run, "--set", "model.width=32") == 0
    out, err = capsys.readouterr()
    assert "already completed 2 of 2 epochs" in out
    assert "not applied: model.width" in err and "Traceback" not in err
    assert files(run) == before


@pytest.mark.slow
def test_a_text_checkpoint_in_a_real_process(tmp_path):
    """`python -m engine run autoencoder --resume x.pt` on a text file: exit 2, one block."""
    (tmp_path / "x.pt").write_text("hello\n", encoding="utf-8")
    done = engine("run", "autoencoder", "--resume", "x.pt", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    one_error(done.stderr, ["not a checkpoint", "where: x.pt"])
    assert not (tmp_path / "artifacts").exists()
