"""`python -m engine check NAME` (issue 5): one line per check, skipped checks reported, exit
code 0 only without a FAIL, nothing written, the RNG left as it was; and the pieces it is made of
(batch descriptions, naming the layer that failed, the first-batch check every run makes)."""

from __future__ import annotations

import copy
import re

import attrs
import pytest
import torch
from bad_recipes import write_registry

from engine.cli import main
from engine.core import preflight
from engine.core.errors import UserError
from engine.tools import check as checks

LINE = re.compile(r"^(ok|warn|FAIL|skip) *  (.{12})  (.+)$")
# the checks `check` promises, in order: written out here, not read from the implementation,
# so that a check dropped from (or reordered in) engine.tools.check fails every test below
NAMES = ["registry", "recipe", "config", "device", "output dir", "model", "loaders",
         "train batch", "val batch", "batch values", "batch device", "dataset[0]", "forward",
         "loss", "gradients", "optimizer", "scheduler", "settings", "overfit", "memory"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGINE_RECIPES", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny models; spinning OpenMP threads only cost time here
    yield write_registry(tmp_path)
    torch.set_num_threads(n)


def _check(recipes, capsys, *argv):
    code = main(["check", *argv, "--recipes", str(recipes)])
    out, err = capsys.readouterr()
    lines = {}
    for line in out.splitlines()[:-1]:
        match = LINE.match(line)
        assert match, f"not a check line: {line!r}"
        lines[match.group(2).strip()] = (match.group(1), match.group(3))
    assert list(lines) == NAMES, out   # every check reported, in order, none dropped
    assert re.match(r"^\d+ ok, \d+ warn, \d+ FAIL, \d+ skipped$", out.splitlines()[-1])
    return code, lines, err


def test_autoencoder_passes_and_leaves_no_trace(project, capsys):
    """A sound recipe: every check ok, exit 0; no file written, global RNG and recipe as before."""
    from recipes.autoencoder import recipe as ae
    folder = project.parent
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert "recipes.toml" in before
    recipe_fields = {k: getattr(ae, k) for k in ("name", "config", "build_model", "callbacks")}
    # a copy of the config's defaults, not the frozen record compared with itself afterwards
    defaults = copy.deepcopy(attrs.asdict(ae.config()))
    rng = torch.get_rng_state()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.set_rng_state(rng)
    torch.manual_seed(123)

    code, lines, err = _check(project, capsys, "ae")

    assert code == 0 and err == "", err
    assert {status for status, _ in lines.values()} == {"ok"}, lines
    assert torch.equal(torch.rand(3), expected_next)   # RNG restored after the checks
    # nothing new but Python's own bytecode cache of the imported recipe module
    after = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert [p for p in after if "__pycache__" not in p] == before
    assert {k: getattr(ae, k) for k in recipe_fields} == recipe_fields
    assert attrs.asdict(ae.config()) == defaults
    assert re.search(r"Sequential: 18,760 parameters, 18,760 trainable", lines["model"][1])
    assert lines["train batch"][1] == "[float32[16, 64]]"
    assert "4 batches/epoch (52 samples, batch_size 16" in lines["loaders"][1]
    assert lines["scheduler"][1].startswith("ReduceLROnPlateau on the validation loss")
    assert re.search(r"loss [\d.]+ -> [\d.]+ in 25 steps", lines["overfit"][1])
    assert "activations" in lines["memory"][1] and "measured" in lines["memory"][1]


def test_failure_skips_what_depends_on_it(project, capsys):
    """A model that cannot take the data: FAIL naming the layer, later checks shown as skipped."""
    code, lines, err = _check(project, capsys, "input_mismatch")
    assert code == 2
    assert lines["dataset[0]"][0] == lines["forward"][0] == "FAIL"
    for name in ("loss", "gradients", "overfit", "memory"):
        assert lines[name][0] == "skip" and "skipped: needs" in lines[name][1], lines[name]
    assert lines["optimizer"][0] == "ok"   # independent checks still run
    assert err.count("error: ") == 2
    assert "found: float32[1, 12] (RuntimeError: mat1 and mat2" in err   # dataset[0]
    assert "found: float32[8, 12] (RuntimeError: mat1 and mat2" in err   # first batch


def test_config_errors_fail_config_and_skip_the_rest(project, capsys):
    """Two bad keys: the config check fails, both blocks are on stderr, the rest is skipped."""
    code, lines, err = _check(project, capsys, "ae", "--set", "train.epocs=3",
                              "--set", "train.bach_size=2")
    assert code == 2 and lines["config"][0] == "FAIL"
    assert "(and 1 more)" in lines["config"][1]
    assert err.count("error: unknown config key") == 2
    assert all(lines[n][0] == "skip" for n in NAMES[3:])


def test_unused_parameter_is_named(project, capsys):
    code, lines, err = _check(project, capsys, "unused_parameter")
    assert code == 2 and lines["gradients"][0] == "FAIL"
    assert "found: unused_head.weight, unused_head.bias" in err


def test_plateau_stepped_per_epoch_warns(project, capsys):
    code, lines, _ = _check(project, capsys, "plateau_per_epoch")
    assert code == 0
    assert lines["scheduler"][0] == "warn" and "no metric" in lines["scheduler"][1]


def test_loss_that_does_not_fall_fails_with_figures(project, capsys):
    code, lines, err = _check(project, capsys, "ae", "--set", "train.learning_rate=1e-12")
    assert code == 2 and lines["overfit"][0] == "FAIL"
    assert re.search(r"found: loss ([\d.]+) -> \1 in 25 steps on one batch", err), err
    assert lines["memory"][0] == "ok" and "estimate" in lines["memory"][1]


@pytest.mark.parametrize("name, fragment", [
    ("returns_none", "forward_batch returned None"),
    ("returns_nonscalar", "not a scalar"),
    ("returns_nograd", "loss without grad"),
])
def test_bad_loss_fails_the_loss_check(project, capsys, name, fragment):
    code, lines, err = _check(project, capsys, name)
    assert code == 2 and lines["loss"][0] == "FAIL" and fragment in lines["loss"][1]
    assert lines["gradients"][0] == lines["overfit"][0] == "skip"


def test_describe_nested_batches():
    batch = {"x": torch.zeros(8, 12, 32), "y": (torch.zeros(8, dtype=torch.int64),
                                                [torch.zeros(2, dtype=torch.float16)]),
             "name": "a"}
    assert preflight.describe(batch) == "{x: float32[8, 12, 32], y: (int64[8], [float16[2]]), " \
                                        "name: str}"


def test_placement_warns_for_tensors_left_elsewhere():
    """With move_batch=False a tensor on another device than the model is a warning."""
    import bad_recipes
    recipe = bad_recipes._recipe("manual", move_batch=False)
    have = {"recipe": recipe, "device": torch.device("cpu"), "model": torch.nn.Linear(2, 2),
            "batch": [torch.zeros(2, 2), torch.zeros(2, device="meta")]}
    with pytest.raises(checks.Outcome) as info:
        checks.check_placement(have)
    assert info.value.status == "warn"
    assert "batch[1] on meta" in info.value.detail and "move_batch is False" in info.value.detail


def test_nested_layer_is_named_with_both_shapes():
    """The innermost module running when the model raised is named, with what it got."""
    import bad_recipes
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 4)),
                                torch.nn.Linear(8, 2))
    batch = torch.zeros(3, 4)
    with preflight.watch_modules(model) as stack:
        with pytest.raises(RuntimeError) as info:
            model(batch)
    error = preflight.forward_error(info.value, bad_recipes.good, stack, batch, "a batch")
    assert "layer '1'" in error.what
    assert error.where.startswith("layer '1' = Linear(in_features=8, out_features=2")
    assert error.expected == "input [..., 8] (in_features=8)"
    assert error.found.startswith("float32[3, 4] (RuntimeError: ")
    assert not any(m._forward_pre_hooks for m in model.modules())   # hooks removed


def test_first_batch_check_names_layer_and_restores_state():
    """The check `run` makes: a clear UserError; RNG and training mode left as they were."""
    import bad_recipes
    recipe = bad_recipes.input_mismatch
    cfg = bad_recipes.TinyConfig()
    model, good_model = recipe.build_model(cfg), bad_recipes.good.build_model(cfg)
    loaders = recipe.build_loaders(cfg)
    rng = torch.get_rng_state()
    with pytest.raises(UserError) as info:
        preflight.first_batch_check(recipe, cfg, model, loaders, torch.device("cpu"))
    assert "layer '0'" in info.value.what and "float32[8, 12]" in info.value.found
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    preflight.first_batch_check(bad_recipes.good, cfg, good_model, loaders, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)


def test_config_file_and_sets_are_layered(project, capsys):
    """--config and --set are named in the config line, in the order they apply."""
    (project.parent / "small.toml").write_text("[train]\nbatch_size = 4\n", encoding="utf-8")
    code, lines, _ = _check(project, capsys, "good", "--config", "small.toml", "--set",
                            "train.learning_rate=0.01")
    assert code == 0
    assert lines["config"][1] == ("TinyConfig from defaults < recipes.toml [good] < --config "
                                  "small.toml < --set train.learning_rate=0.01")
    assert "train 12 batches/epoch (48 samples, batch_size 4" in lines["loaders"][1]
    assert lines["optimizer"][1].startswith("Adam, lr 0.01,")
