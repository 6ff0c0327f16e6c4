"""The catalogue of bad input (issue 5): each mistake ends with exit code 2, one `error:` block
per mistake on stderr naming the user's file, key, flag or function, no traceback, and no run
directory. Most cases run in-process through `engine.cli.main` (both `run` and `check`); a few
run as real `python -m engine` subprocesses to see the process end to end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_recipes import write_registry

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]

# (case id, argv after the verb, extra recipes.toml text or None, fragments stderr must hold)
CASES = [
    # --- the registry and the recipe's import path
    ("unknown-recipe", ["autoencodr"], '[autoencoder]\nrecipe = "recipes.autoencoder:recipe"\n',
     ["unknown recipe 'autoencodr'", "expected: one of ae, autoencoder, empty_train",
      "hint: did you mean 'autoencoder'?"]),
    ("module-missing", ["no_module"], '[no_module]\nrecipe = "no_such_module:recipe"\n',
     ["recipe module 'no_such_module' not found", "[no_module] recipe = \"no_such_module"]),
    ("attribute-missing", ["no_attr"], '[no_attr]\nrecipe = "bad_recipes:god"\n',
     ["'bad_recipes' has no attribute 'god'", "hint: did you mean 'good'?"]),
    ("not-a-recipe", ["not_a_recipe"], "",
     ["'bad_recipes:not_a_recipe' is not a Recipe", "expected: an engine.Recipe object",
      "found: dict"]),
    ("module-exits-on-import", ["exits"], '[exits]\nrecipe = "exits_on_import:recipe"\n',
     ["recipe module 'exits_on_import' failed to import", "found: SystemExit: 3"]),
    # --- config values, from recipes.toml and from --set
    ("unknown-key", ["ae"], "epocs = 3\n",
     ["unknown config key 'train.epocs'", "where: ", "recipes.toml [ae.train]",
      "found: epocs = 3", "hint: did you mean 'epochs'?"]),
    ("wrong-type-toml", ["ae"], 'epochs = "ten"\n',
     ["wrong type for config key 'train.epochs'", "expected: int", "found: str 'ten'",
      "[ae.train]"]),
    ("wrong-type-set", ["ae", "--set", "train.epochs=ten"], "",
     ["wrong type for config key 'train.epochs'", "where: --set train.epochs=ten",
      "expected: int", "found: str 'ten'"]),
    ("epochs-0", ["ae", "--set", "train.epochs=0"], "",
     ["out of range for 'train.epochs'", "expected: >= 1", "found: epochs = 0"]),
    ("lr-0", ["ae", "--set", "train.learning_rate=0.0"], "",
     ["out of range for 'train.learning_rate'", "expected: > 0"]),
    ("lr-negative", ["ae", "--set", "train.learning_rate=-1e-3"], "",
     ["out of range for 'train.learning_rate'", "found: learning_rate = -0.001"]),
    ("weight-decay-negative", ["ae", "--set", "train.weight_decay=-0.1"], "",
     ["out of range for 'train.weight_decay'", "expected: >= 0"]),
    ("patience-negative", ["ae", "--set", "train.early_stopping_patience=-1"], "",
     ["out of range for 'train.early_stopping_patience'", "found: early_stopping_patience = -1"]),
    ("lr-patience-negative", ["ae", "--set", "train.lr_patience=-2"], "",
     ["out of range for 'train.lr_patience'"]),
    ("decay-factor-1", ["ae", "--set", "train.lr_decay_factor=1.0"], "",
     ["out of range for 'train.lr_decay_factor'", "0 < lr_decay_factor < 1"]),
    ("decay-factor-0", ["ae", "--set", "train.lr_decay_factor=0"], "",
     ["out of range for 'train.lr_decay_factor'", "found: lr_decay_factor = 0"]),
    ("lr-inf", ["ae", "--set", "train.learning_rate=inf"], "",
     ["out of range for 'train.learning_rate'", "expected: a finite number, > 0",
      "found: learning_rate = inf"]),
    ("seed-past-64-bits", ["ae", "--set", "train.seed=99999999999999999999999"], "",
     ["out of range for 'train.seed'", "expected: an integer between -2**63 and 2**63 - 1"]),
    ("workers-beyond-any-machine", ["ae", "--set", "train.num_workers=1000"], "",
     ["out of range for 'train.num_workers'", "0 <= num_workers <= 256",
      "found: num_workers = 1000"]),
    ("grad-accum-0", ["ae", "--set", "train.grad_accum_steps=0"], "",
     ["out of range for 'train.grad_accum_steps'", "expected: >= 1"]),
    ("unknown-device", ["ae", "--set", "train.device=tpu"], "",
     ["'train.device'", '"auto", "cpu", "cuda", "cuda:N" or "mps"', 'found: device = "tpu"']),
    ("setting-nothing-reads", ["ae", "--set", "train.warmup_steps=500"], "",
     ["train.warmup_steps is set, but none of the recipe's builders reads it",
      "found: warmup_steps = 500 (default 0)", "schedules.warmup_cosine"]),
    ("set-without-equals", ["ae", "--set", "train.epochs"], "",
     ["--set needs KEY=VALUE", "where: --set train.epochs"]),
    ("set-unknown-key", ["ae", "--set", "train.epocs=3"], "",
     ["unknown config key 'train.epocs'", "where: --set train.epocs=3",
      "hint: did you mean 'epochs'?"]),
    ("set-unparsable", ["ae", "--set", "train.learning_rate=1e-3 fast"], "",
     ["--set value is not a TOML value", "found: '1e-3 fast'"]),
    ("config-missing", ["ae", "--config", "nowhere.toml"], "",
     ["--config file not found", "where: nowhere.toml"]),
    ("config-malformed", ["ae", "--config", "bad.toml"], "",
     ["--config file is not valid TOML", "where: bad.toml", "line 2, column"]),
    ("config-not-utf8", ["ae", "--config", "binary.toml"], "",
     ["--config file is not valid TOML", "where: binary.toml", "expected: TOML as UTF-8 text",
      "found: byte 0xff at offset 0, not UTF-8"]),
    ("output-dir-under-a-file", ["good", "--set", 'train.output_dir="occupied/out"'], "",
     ["the output directory cannot be written", 'train.output_dir = "occupied/out"',
      "occupied"]),
    # --- the recipe's data and forward_batch
    ("empty-train-loader", ["empty_train"], "",
     ["the training loader is empty", "build_loaders (bad_recipes.build_empty_train)",
      "0 batches (0 samples"]),
    ("empty-val-loader", ["empty_val"], "",
     ["the validation loader is empty", "bad_recipes.build_empty_val"]),
    ("batch-larger-than-data", ["good", "--set", "train.batch_size=64", "--set",
                                "data.drop_last=true"], "",
     ["the training loader is empty", "48 samples, batch_size 64, drop_last True"]),
    ("returns-none", ["returns_none"], "",
     ["forward_batch returned None", "bad_recipes.forward_none", "forget `return loss`"]),
    ("returns-tuple", ["returns_tuple"], "",
     ["forward_batch returned no loss tensor", "found: tuple", "StepOutput(loss"]),
    ("returns-nonscalar", ["returns_nonscalar"], "",
     ["loss that is not a scalar", "shape (8, 1)", "loss.mean()"]),
    ("returns-nograd", ["returns_nograd"], "",
     ["loss without grad", "bad_recipes.forward_nograd", "torch.no_grad()"]),
    ("input-mismatch", ["input_mismatch"], "",
     ["the model cannot take the first training batch", "layer '0' = Linear(in_features=32",
      "bad_recipes.build_mismatched_model", "expected: input [..., 32]",
      "found: float32[8, 12]"]),
]
if not torch.cuda.is_available():
    CASES.append(("cuda-missing", ["ae", "--set", "train.device=cuda"], "",
                  ["CUDA is not available on this machine", 'train.device = "cuda"',
                   'hint: use device = "cpu"']))


def _stderr_ok(err: str, fragments: list[str]) -> None:
    assert err.startswith("error: "), err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    # every block line is `error:` or an indented labelled line
    for line in err.rstrip("\n").splitlines():
        assert re.match(r"^(error: |  (where|expected|found|hint): )", line), line


def _no_run_dir(folder) -> None:
    runs = list((folder / "artifacts").glob("models/*/runs/*"))
    assert runs == [], runs


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGINE_RECIPES", raising=False)
    monkeypatch.delenv("ENGINE_DEBUG", raising=False)
    (tmp_path / "bad.toml").write_text("[train]\nepochs 3\n", encoding="utf-8")
    (tmp_path / "occupied").write_text("a file, not a folder", encoding="utf-8")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[train]\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny models; spinning OpenMP threads only cost time here
    yield tmp_path
    torch.set_num_threads(n)


@pytest.mark.parametrize("verb", ["run", "check"])
@pytest.mark.parametrize("case, argv, extra, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(project, capsys, verb, case, argv, extra, fragments):
    """Each catalogued mistake: exit code 2, its block(s) on stderr, no traceback, no run dir."""
    recipes = write_registry(project, extra=extra)
    rng = torch.get_rng_state()
    code = main([verb, *argv, "--recipes", str(recipes)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    _stderr_ok(err, fragments)
    _no_run_dir(project)
    if verb == "check":
        assert re.search(r"^FAIL  ", out, re.M), out
        assert torch.equal(torch.get_rng_state(), rng)


def test_a_folder_named_as_the_registry(project, capsys):
    (project / "folder.toml").mkdir()
    assert main(["run", "ae", "--recipes", str(project / "folder.toml")]) == 2
    _stderr_ok(capsys.readouterr().err, ["recipes file not found", "found: a folder"])


@pytest.mark.parametrize("case, text, fragments", [
    ("not-toml", '[ae]\nrecipe = "recipes.autoencoder:recipe"\nepochs 3\n',
     ["recipes file is not valid TOML", "(at line 3, column 8)"]),
    ("entry-without-recipe", '[ae]\ndescription = "no import path"\n',
     ["recipe 'ae' has no import path", "[ae]", 'expected: recipe = "package.module:attribute"']),
    ("description-not-text", '[ae]\nrecipe = "recipes.autoencoder:recipe"\ndescription = 7\n',
     ["recipe 'ae' has a description that is not text", "[ae] description", "found: int 7"]),
], ids=["not-toml", "entry-without-recipe", "description-not-text"])
def test_broken_registry(project, capsys, case, text, fragments):
    """A recipes.toml that is not TOML (line and column) or has an entry without `recipe`."""
    recipes = write_registry(project, text=text)
    assert main(["run", "ae", "--recipes", str(recipes)]) == 2
    _stderr_ok(capsys.readouterr().err, [*fragments, str(recipes)])
    _no_run_dir(project)


def test_missing_registry(project, capsys):
    """No recipes.toml here or above, or --recipes naming a missing file."""
    assert main(["run", "ae"]) == 2
    _stderr_ok(capsys.readouterr().err, ["recipes.toml not found", "--recipes FILE"])
    assert main(["check", "ae", "--recipes", "missing.toml"]) == 2
    _stderr_ok(capsys.readouterr().err, ["recipes file not found", "--recipes missing.toml"])
    _no_run_dir(project)


def test_several_mistakes_are_several_blocks(project, capsys):
    """Two unknown keys and a range error found together print as three blocks."""
    recipes = write_registry(project, extra="epocs = 3\nlearnig_rate = 0.1\n")
    assert main(["run", "ae", "--recipes", str(recipes), "--set", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    _stderr_ok(err, ["'train.epocs'", "'train.learnig_rate'", "did you mean 'learning_rate'?"])
    assert err.count("error: ") == 2   # unknown keys stop structuring before range checks
    _no_run_dir(project)


def test_unwritable_output_dir_flag(project, capsys):
    """--output-dir under a regular file (root ignores permissions, not file types)."""
    recipes = write_registry(project)
    assert main(["run", "good", "--recipes", str(recipes), "--output-dir", "occupied/out"]) == 2
    _stderr_ok(capsys.readouterr().err, ["the output directory cannot be written",
                                         'train.output_dir = "occupied/out"', "occupied"])
    assert (project / "occupied").is_file()


def test_nan_inputs_warn_in_check(project, capsys):
    """NaN in the first batch's inputs: `check` warns and passes (exit 0)."""
    recipes = write_registry(project)
    assert main(["check", "nan_inputs", "--recipes", str(recipes)]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^warn  batch values +non-finite inputs: train batch\[0\]: \d+ NaN", out,
                     re.M), out
    assert not re.search(r"^FAIL", out, re.M) and err == "", (out, err)


# --- end to end: real processes -------------------------------------------------------------

SUBPROCESS = [
    (["run", "autoencodr"], 2, ["unknown recipe 'autoencodr'"]),
    (["check", "ae", "--set", "train.epochs=ten"], 2, ["expected: int"]),
    (["run", "returns_none"], 2, ["forward_batch returned None"]),
    (["check", "input_mismatch"], 2, ["layer '0' = Linear(in_features=32"]),
    (["run", "nan_inputs"], 0, ["warning: the first training batch holds non-finite inputs "
                                "(batch[0]: "]),
]


@pytest.mark.slow
def test_bad_input_in_real_processes(tmp_path):
    """`python -m engine`: each mistake exits 2 with its block on stderr, no traceback and no run
    directory; NaN inputs are a warning and the run trains to the end (exit 0)."""
    procs = []
    for i, (argv, _, _) in enumerate(SUBPROCESS):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        recipes = write_registry(cwd, extra='[autoencoder]\nrecipe = "x:y"\n')
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(cwd),
               "OMP_NUM_THREADS": "1"}
        env.pop("ENGINE_DEBUG", None)
        env.pop("ENGINE_RECIPES", None)
        # started together: on a small machine most of each one's time is importing torch
        procs.append((cwd, subprocess.Popen(
            [sys.executable, "-m", "engine", *argv, "--recipes", str(recipes)], cwd=cwd,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for (cwd, proc), (argv, code, fragments) in zip(procs, SUBPROCESS, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == code, (argv, out, err)
        if code == 2:
            _stderr_ok(err, fragments)
            _no_run_dir(cwd)
        else:
            assert all(f in err for f in fragments) and "Traceback" not in err, err
            assert len(list(cwd.glob("artifacts/models/nan_inputs/runs/*/model.pt"))) == 1
