"""`engine new`: each kind's recipe is lint-clean, checks, trains with a falling loss, and the
registry gains exactly its section; bad names and kinds are refused with nothing written."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli as engine_cli
from engine.core import schedules
from engine.core.config import to_dict
from engine.io.layering import tomllib
from engine.tools import new as scaffold

MAIN = Path(__file__).resolve().parents[2]
COPIED = ("engine", "steps", "recipes", "recipes.toml", "pyproject.toml")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project (not installed), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "artifacts", "*.tmp")
    for item in COPIED:
        src = MAIN / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=ignore)
        else:
            shutil.copy2(src, root / item)
    (root / "tmp").mkdir()
    return root


def engine(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_RECIPES", "ENGINE_DEBUG")}
    env.update(PYTHONPATH=str(project), TMPDIR=str(project / "tmp"),
               # one thread: on a loaded 2-core machine OpenMP threads wait on each other
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ruff(*paths: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(config),
                           "--no-cache", *map(str, paths)], capture_output=True, text=True,
                          cwd=config.parent)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (bytes for files), so a refusal can be shown to write nothing."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def run_sets(kind: str) -> list[str]:
    sets = ["--set", "train.epochs=2"]
    if kind == "cnn":
        sets += ["--set", "train.step_size=1"]  # a decay between the two epochs
    return sets


@pytest.fixture(scope="module")
def made(project: Path) -> dict[str, dict]:
    """Each kind made by `engine new` (one after the other: they append to one file), then
    checked and trained for two epochs (the kinds in parallel: one thread each)."""
    out: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.delenv("ENGINE_RECIPES", raising=False)
        for kind in scaffold.KINDS:
            before = (project / "recipes.toml").read_bytes()
            stdout = io.StringIO()
            # in-process: the same entry point as `python -m engine`, without the start-up
            with contextlib.redirect_stdout(stdout):
                code = engine_cli.main(["new", f"my_{kind}", "--kind", kind])
            out[kind] = {"code": code, "stdout": stdout.getvalue(), "before": before,
                         "after": (project / "recipes.toml").read_bytes()}

    def check_and_run(kind: str) -> None:
        name = f"my_{kind}"
        if out[kind]["code"] != 0:
            return
        out[kind]["check"] = engine(project, "check", name)
        out[kind]["run"] = engine(project, "run", name, *run_sets(kind))

    with concurrent.futures.ThreadPoolExecutor(len(scaffold.KINDS)) as pool:
        list(pool.map(check_and_run, scaffold.KINDS))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", scaffold.KINDS)
def test_new_recipe_checks_and_trains_with_falling_loss(project: Path, made: dict, kind: str):
    """new -> lint-clean files + exactly one new registry section; check passes; 2 epochs of
    run complete with a falling training loss; transformer and cnn show their schedules."""
    name = f"my_{kind}"
    result = made[kind]
    assert result["code"] == 0
    assert f"python -m engine check {name}" in result["stdout"]
    assert f"python -m engine run {name}" in result["stdout"]
    assert f"artifacts/models/{name}/runs/<run_id>/" in result["stdout"]
    folder = project / "recipes" / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(scaffold.MODULES)
    before, after = result["before"], result["after"]
    assert after.startswith(before)  # the old bytes, untouched
    added = tomllib.loads(after[len(before):].decode())
    assert list(added) == [name] and added[name]["recipe"] == f"recipes.{name}:recipe"
    assert tomllib.loads(after.decode()) == {**tomllib.loads(before.decode()), **added}
    lint = ruff(folder, config=project / "pyproject.toml")
    assert lint.returncode == 0, lint.stdout + lint.stderr

    checked = result["check"]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]

    ran = result["run"]
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (run_dir,) = (project / "artifacts" / "models" / name / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    assert metrics["status"] == "completed" and history["epoch"] == [0, 1]
    first, last = history["train_loss"]
    assert last < first, history
    train = added[name]["train"]
    rate = train["learning_rate"]
    if kind == "transformer":
        # learning_rate is the rate at the start of each epoch: warmup, then cosine
        data = added[name]["data"]
        per_epoch = math.ceil(data["train_size"] / train["batch_size"])
        factor = [schedules.warmup_cosine_factor(step, train["warmup_steps"], 2 * per_epoch,
                                                 train["min_lr"] / rate)
                  for step in (0, per_epoch)]
        assert history["learning_rate"] == pytest.approx([rate * f for f in factor])
        assert history["learning_rate"][0] < history["learning_rate"][1] < rate
    elif kind == "cnn":
        assert history["learning_rate"] == pytest.approx([rate, rate * train["gamma"]])
    else:  # ReduceLROnPlateau: no decay before `lr_patience` bad validations
        assert history["learning_rate"] == pytest.approx([rate, rate])
    if kind != "autoencoder":
        metric = "val_top1" if kind == "ranking" else "val_accuracy"
        assert all(0 <= v <= 1 for v in history[metric])


@pytest.mark.parametrize("args, what", [
    (["autoencoder", "--kind", "cnn"], "recipe 'autoencoder' already exists"),
    (["2fast", "--kind", "cnn"], "'2fast' cannot name a recipe"),
    (["my-net", "--kind", "cnn"], "'my-net' cannot name a recipe"),
    (["class", "--kind", "cnn"], "'class' cannot name a recipe"),
    (["café", "--kind", "cnn"], "'café' cannot name a recipe"),
    (["__init__", "--kind", "cnn"], "'__init__' cannot name a recipe"),
    (["fresh", "--kind", "cnnn"], "unknown kind 'cnnn'"),
])
def test_new_refuses_with_exit_2_and_writes_nothing(project: Path, monkeypatch, capsys,
                                                    args: list[str], what: str):
    """An existing name, a non-identifier or an unknown kind: exit 2, one message, no file."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("ENGINE_RECIPES", raising=False)
    before = tree(project)
    assert engine_cli.main(["new", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {what}") and "Traceback" not in err
    if "unknown kind" in what:
        assert "did you mean 'cnn'?" in err and "autoencoder, ranking, transformer, cnn" in err
    assert tree(project) == before


@pytest.mark.slow
def test_new_refusal_as_a_process_exits_2(project: Path):
    """The real `python -m engine new` process: exit code 2, one error block, no traceback."""
    before = tree(project)
    refused = engine(project, "new", "my-net", "--kind", "transformr")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: unknown kind 'transformr'")
    assert "did you mean 'transformer'?" in refused.stderr
    assert "error: 'my-net' cannot name a recipe" in refused.stderr  # both mistakes at once
    assert "hint: e.g. my_net" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert tree(project) == before


@pytest.mark.parametrize("taken", ["folder", "module"])
def test_new_refuses_a_name_taken_in_the_recipes_folder(tmp_path: Path, taken: str):
    """A recipes/NAME folder or recipes/NAME.py not in the registry is never overwritten."""
    registry = tmp_path / "recipes.toml"
    registry.write_bytes(b"# no recipes yet")
    if taken == "folder":
        (tmp_path / "recipes" / "orphan").mkdir(parents=True)
        (tmp_path / "recipes" / "orphan" / "keep.py").write_text("x = 1\n")
    else:
        (tmp_path / "recipes").mkdir()
        (tmp_path / "recipes" / "orphan.py").write_text("x = 1\n")
    before = tree(tmp_path)
    with pytest.raises(scaffold.UserError, match="already taken"):
        scaffold.cli("orphan", "autoencoder", registry)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("start", ["registry", "registry and folder", "empty folder"])
def test_a_failure_while_appending_leaves_nothing_behind(tmp_path: Path, monkeypatch,
                                                         start: str):
    """The registry is written last; if that fails it is cut back (or removed if `new` made
    it) and the recipe folder removed."""
    registry = tmp_path / "recipes.toml"
    old = b"[old]\nrecipe = \"recipes.old:recipe\""  # no final newline
    if start != "empty folder":
        registry.write_bytes(old)
    if start == "registry and folder":
        (tmp_path / "recipes").mkdir()
        (tmp_path / "recipes" / "__init__.py").write_text("")
    before = tree(tmp_path)

    def broken(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)  # after the section was written to the file
    with pytest.raises(scaffold.UserError, match="could not write") as refused:
        scaffold.cli("fresh", "ranking", registry)
    assert "disk full" in refused.value.found
    assert tree(tmp_path) == before
    monkeypatch.undo()
    assert scaffold.cli("fresh", "ranking", registry) == 0
    if start != "empty folder":
        text = registry.read_bytes()
        assert text.startswith(old + b"\n\n[fresh]\n")
        assert set(tomllib.loads(text.decode())) == {"old", "fresh"}


def test_new_in_a_folder_without_registry_creates_it(tmp_path: Path, monkeypatch, capsys):
    """No recipes.toml yet: `new` makes it (with only the new section) and the recipes folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGINE_RECIPES", raising=False)
    assert scaffold.cli("first", "autoencoder", tmp_path / "recipes.toml") == 0
    _, section = scaffold.render("first", "autoencoder")
    assert (tmp_path / "recipes.toml").read_text() == section
    assert sorted(p.name for p in (tmp_path / "recipes" / "first").iterdir()) == sorted(
        scaffold.MODULES)
    assert (tmp_path / "recipes" / "__init__.py").is_file()
    assert "created recipes/first/" in capsys.readouterr().out


def test_templates_match_their_config_classes_and_stay_lint_clean_for_long_names(
        tmp_path: Path):
    """The recipes.toml section of each kind equals its config class's defaults, and the code
    passes ruff even for a 40-character name."""
    name = "a_rather_long_recipe_name_for_line_width"
    assert len(name) == 40
    folders = []
    for kind in scaffold.KINDS:
        modules, section = scaffold.render(name, kind)
        folder = tmp_path / kind / name
        folder.mkdir(parents=True)
        for module, text in modules.items():
            (folder / module).write_text(text)
        folders.append(folder)
        spec = importlib.util.spec_from_file_location(f"_scaffold_{kind}_config",
                                                      folder / "config.py")
        config = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(config)
        defaults = to_dict(getattr(config, f"{scaffold.class_prefix(name)}Config")())
        tables = tomllib.loads(section)[name]
        # [train] sets the kind's training choices; its own tables repeat the class defaults
        assert set(tables) == {"recipe", "description", *defaults}, kind
        for table in set(defaults) - {"train"}:
            assert tables[table] == defaults[table], (kind, table)
    lint = ruff(*folders, config=MAIN / "pyproject.toml")
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _refused(monkeypatch, capsys, cwd: Path, *args: str) -> str:
    """`engine ARGS` in this process from `cwd`: asserts exit 2 and one error, no traceback."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("ENGINE_RECIPES", raising=False)
    assert engine_cli.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_new_refuses_a_registry_in_a_folder_that_does_not_exist(tmp_path, monkeypatch, capsys):
    """--recipes naming a file in a missing folder: exit 2 naming it, no folder made."""
    err = _refused(monkeypatch, capsys, tmp_path, "--recipes", str(tmp_path / "no" / "r.toml"),
                   "new", "fresh", "--kind", "cnn")
    assert "the folder of recipes.toml does not exist" in err and str(tmp_path / "no") in err
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_a_recipes_file_where_the_folder_goes(tmp_path, monkeypatch, capsys):
    """A file named `recipes` beside recipes.toml: exit 2 naming it, both files unchanged."""
    (tmp_path / "recipes.toml").write_bytes(b'[old]\nrecipe = "x:y"\n')
    (tmp_path / "recipes").write_bytes(b"notes of mine\n")
    before = tree(tmp_path)
    err = _refused(monkeypatch, capsys, tmp_path, "new", "fresh", "--kind", "cnn")
    assert "'recipes' beside recipes.toml is not a folder" in err
    assert f"where: {tmp_path / 'recipes'}" in err or "where: recipes" in err
    assert tree(tmp_path) == before


def test_a_read_only_registry_is_refused_and_left_whole(tmp_path, monkeypatch, capsys):
    """recipes.toml that cannot be opened for appending (read-only; root ignores chmod, so
    the refusal is simulated): exit 2 naming the file, its bytes and the folder unchanged."""
    registry = tmp_path / "recipes.toml"
    registry.write_bytes(b'[old]\nrecipe = "x:y"\n')
    before = tree(tmp_path)
    real_open = open

    def read_only(file, mode="r", *args, **kwargs):
        if Path(file) == registry and "a" in mode:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    err = _refused(monkeypatch, capsys, tmp_path, "new", "fresh", "--kind", "cnn")
    assert "could not write the recipe; nothing was changed" in err
    assert "recipes.toml" in err and "PermissionError: Permission denied" in err
    assert tree(tmp_path) == before
