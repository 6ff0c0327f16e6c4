"""`engine new NAME --model MOD:CLASS --dataset MOD:CLASS`: a recipe wired to the user's own
classes (written by each test into a tmp project, not in the engine's) checks and trains with no
edit; what cannot be wired or checked is refused with exit 2 and nothing written."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import cli as engine_cli
from engine.io.layering import tomllib

ROOT = Path(__file__).resolve().parents[2]

MODULES = {
    "fusion_model.py": '''
        import torch
        from torch import nn


        class FeatureFusionModel(nn.Module):
            """Class logits from an image and a text feature vector."""

            def __init__(self, image_dim: int, text_dim: int, num_classes: int,
                         hidden_dim: int = 32, dropout: float = 0.0, act=nn.GELU):
                super().__init__()
                self.image_proj = nn.Linear(image_dim, hidden_dim)
                self.text_proj = nn.Linear(text_dim, hidden_dim)
                self.head = nn.Sequential(act(), nn.Dropout(dropout),
                                          nn.Linear(2 * hidden_dim, num_classes))

            def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
                fused = torch.cat([self.image_proj(image), self.text_proj(text)], dim=-1)
                return self.head(fused)
        ''',
    "fusion_data.py": '''
        import torch
        from torch.utils.data import Dataset


        class FusionDataset(Dataset):
            """Two feature vectors and a class label per sample (3 classes)."""

            num_classes = 3

            def __init__(self, size: int = 256, image_dim: int = 12, text_dim: int = 6,
                         seed: int = 0):
                g = torch.Generator().manual_seed(seed)
                self.label = torch.randint(0, 3, (size,), generator=g)
                centers = torch.randn(3, image_dim + text_dim, generator=g) * 2
                x = centers[self.label] + torch.randn(size, image_dim + text_dim, generator=g)
                self.image, self.text = x[:, :image_dim], x[:, image_dim:]

            def __len__(self):
                return len(self.label)

            def __getitem__(self, i):
                return {"image": self.image[i], "text": self.text[i], "label": self.label[i]}
        ''',
    "ae_model.py": '''
        import torch
        from torch import nn


        class AutoEncoder(nn.Module):
            def __init__(self, input_dim: int, latent_dim: int = 4, hidden: tuple = (32,)):
                super().__init__()
                self.encoder = nn.Sequential(nn.Linear(input_dim, hidden[0]), nn.GELU(),
                                             nn.Linear(hidden[0], latent_dim))
                self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden[0]), nn.GELU(),
                                             nn.Linear(hidden[0], input_dim))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.decoder(self.encoder(x))
        ''',
    "ae_data.py": '''
        import torch
        from torch.utils.data import TensorDataset


        class Vectors(TensorDataset):
            """Vectors near a random rank-3 subspace."""

            def __init__(self, size: int = 256, dim: int = 16, rank: int = 3, seed: int = 0):
                g = torch.Generator().manual_seed(seed)
                basis = torch.randn(rank, dim, generator=g)
                super().__init__(torch.randn(size, rank, generator=g) @ basis)
        ''',
    "rank_model.py": '''
        import torch
        from torch import nn


        class TokenRanker(nn.Module):
            """A score for each candidate (a token sequence) of a list."""

            def __init__(self, vocab_size: int, embed_dim: int = 16):
                super().__init__()
                self.embed = nn.Embedding(vocab_size, embed_dim)
                self.score = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(),
                                           nn.Linear(embed_dim, 1))

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.score(self.embed(tokens).mean(dim=-2)).squeeze(-1)
        ''',
    "rank_data.py": '''
        import torch
        from torch.utils.data import Dataset


        class Lists(Dataset):
            """Lists of candidates (token sequences) and their true scores."""

            vocab_size = 20

            def __init__(self, split: str = "train", size: int = 128, list_size: int = 6,
                         seq_len: int = 5):
                g = torch.Generator().manual_seed({"train": 0, "val": 1}[split])
                weights = torch.linspace(-1, 1, self.vocab_size)
                self.tokens = torch.randint(0, self.vocab_size, (size, list_size, seq_len),
                                            generator=g)
                self.scores = weights[self.tokens].mean(-1)

            def __len__(self):
                return len(self.tokens)

            def __getitem__(self, i):
                return {"tokens": self.tokens[i], "scores": self.scores[i]}
        ''',
    "pairs_data.py": '''
        import torch
        from torch.utils.data import Dataset


        class Pairs(Dataset):
            """Fields named unlike FeatureFusionModel.forward's parameters."""

            def __init__(self, size: int = 64):
                g = torch.Generator().manual_seed(0)
                self.a, self.b = torch.randn(size, 12, generator=g), torch.randn(size, 6)
                self.y = (self.a[:, 0] > 0).long() + (self.b[:, 0] > 0).long()

            def __len__(self):
                return len(self.y)

            def __getitem__(self, i):
                return {"img_feats": self.a[i], "txt_feats": self.b[i], "y": self.y[i]}
        ''',
    "reg_code.py": '''
        import dataclasses

        import torch
        from torch import nn
        from torch.utils.data import Dataset


        @dataclasses.dataclass
        class Sample:
            features: torch.Tensor
            target: torch.Tensor


        class Regressor(nn.Module):
            def __init__(self, features_dim: int, out_dim: int = 2):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(features_dim, 16), nn.Tanh(),
                                         nn.Linear(16, out_dim))

            def forward(self, features):
                return self.net(features)


        class Records(Dataset):
            def __init__(self, train: bool = True, size: int = 96):
                g = torch.Generator().manual_seed(0 if train else 1)
                self.x = torch.randn(size, 5, generator=g)
                self.y = torch.stack([self.x[:, 0] * 2, self.x[:, 1] - self.x[:, 2]], dim=1)

            def __len__(self):
                return len(self.x)

            def __getitem__(self, i):
                return Sample(self.x[i], self.y[i])


        class NotAModel:
            pass
        ''',
    "odd_models.py": '''
        import torch
        from torch import nn


        class ShortNames(nn.Module):
            """Sizes named unlike the fields: only one choice of them fits."""

            def __init__(self, img_dim: int, txt_dim: int, n_out: int = 3):
                super().__init__()
                self.a, self.b = nn.Linear(img_dim, 8), nn.Linear(txt_dim, 8)
                self.head = nn.Linear(16, n_out)

            def forward(self, image, text):
                return self.head(torch.cat([self.a(image), self.b(text)], dim=-1))


        class UnusedLayer(nn.Module):
            """A layer forward never calls: the gradients check fails."""

            def __init__(self, image_dim: int, text_dim: int, num_classes: int):
                super().__init__()
                self.image_proj = nn.Linear(image_dim, num_classes)
                self.text_proj = nn.Linear(text_dim, num_classes)

            def forward(self, image, text):
                return self.image_proj(image)


        class IgnoresBackbone(nn.Module):
            """Parameters the model never reads: forward runs with any value of them."""

            def __init__(self, backbone, cfg):
                super().__init__()
                self.head = nn.Linear(12, 3)

            def forward(self, image):
                return self.head(image)


        class NoForward(nn.Module):
            def __init__(self, image_dim: int = 12):
                super().__init__()
                self.head = nn.Linear(image_dim, 3)
        ''',
    "broken_code.py": "raise RuntimeError('this module does not import')\n",
}

CASES = {
    "fusion": (["--model", "fusion_model:FeatureFusionModel", "--dataset",
                "fusion_data:FusionDataset"], "val_accuracy",
               ["model.image_dim = 12: the last dimension of batch[\"image\"]",
                "model.text_dim = 6: the last dimension of batch[\"text\"]",
                "model.num_classes = 3: FusionDataset.num_classes", "cross-entropy",
                "kind mlp"]),
    "recon": (["--model", "ae_model:AutoEncoder", "--dataset", "ae_data:Vectors"],
              "val_explained_variance",
              ["model.input_dim = 16: the last dimension of batch[0]",
               "reconstruction error", "kind autoencoder"]),
    "ranker": (["--model", "rank_model:TokenRanker", "--dataset", "rank_data:Lists"],
               "val_ndcg_at_5",
               ["model.vocab_size = 20: Lists.vocab_size", "ListNet", "kind ranking"]),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project: their modules and a recipes.toml of its own; the engine elsewhere."""
    root = tmp_path_factory.mktemp("userproject")
    for name, text in MODULES.items():
        (root / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    (root / "recipes.toml").write_text("# this project's recipes\n", encoding="utf-8")
    (root / "tmp").mkdir()
    return root


def engine(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_RECIPES", "ENGINE_DEBUG")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(project)]),
               TMPDIR=str(project / "tmp"), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))
            if "__pycache__" not in p.parts and "tmp" not in p.parts}


def lint(folder: Path, project: Path, *modules: str) -> subprocess.CompletedProcess:
    """ruff with the engine's settings; the engine and the user's modules sorted as first-party
    (as they are in a project that holds both)."""
    first_party = ", ".join(repr(m) for m in ("engine", "steps", *modules))
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
         str(ROOT / "pyproject.toml"), "--config",
         f"lint.isort.known-first-party = [{first_party}]", str(folder)],
        capture_output=True, text=True, cwd=project)


@pytest.fixture(scope="module")
def made(project: Path) -> dict[str, dict]:
    """Each case through `new` (one after the other: they append to one recipes.toml), then
    `check` and `run --set train.epochs=2` (the cases in parallel)."""
    out = {}
    for name, (args, _, _) in CASES.items():
        before = (project / "recipes.toml").read_bytes()
        out[name] = {"new": engine(project, "new", name, *args), "before": before,
                     "after": (project / "recipes.toml").read_bytes()}

    def check_and_run(name: str) -> None:
        if out[name]["new"].returncode == 0:
            out[name]["check"] = engine(project, "check", name)
            out[name]["run"] = engine(project, "run", name, "--set", "train.epochs=2")

    with concurrent.futures.ThreadPoolExecutor(len(CASES)) as pool:
        list(pool.map(check_and_run, CASES))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_wired_recipe_checks_and_trains_with_falling_loss(project: Path, made: dict, name: str):
    """new -> the inferences printed and in the docstring, the user's classes imported (not
    copied), lint-clean files, one new registry section with a probed rate; check passes; two
    epochs of run complete with a falling training loss and the task's metric."""
    args, metric, inferred = CASES[name]
    result = made[name]
    new = result["new"]
    assert new.returncode == 0, new.stdout + new.stderr
    for words in inferred:
        assert words in new.stdout, new.stdout
    assert "20 ok, 0 warn, 0 FAIL" in new.stdout
    folder = project / "recipes" / name
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".py") == [
        "__init__.py", "config.py", "data.py", "model.py"]
    text = {p.name: p.read_text() for p in folder.glob("*.py")}
    model_module, model_class = args[1].split(":")
    data_module, data_class = args[3].split(":")
    assert f"from {model_module} import {model_class}" in text["model.py"]
    assert f"from {data_module} import {data_class}" in text["data.py"]
    assert not any(f"class {model_class}" in t or f"class {data_class}" in t
                   for t in text.values())
    for words in inferred[:1]:
        assert words in " ".join(text["__init__.py"].split())   # the docstring says it too

    before, after = result["before"], result["after"]
    assert after.startswith(before)
    added = tomllib.loads(after[len(before):].decode())
    assert list(added) == [name] and added[name]["recipe"] == f"recipes.{name}:recipe"
    rate = added[name]["train"]["learning_rate"]
    assert f"train.learning_rate = {rate!r}: the overfit probe" in new.stdout
    assert f"{rate!r}: " in text["__init__.py"]   # the figures the rate was kept for
    linted = lint(folder, project, model_module, data_module)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    checked = result["check"]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "20 ok, 0 warn, 0 FAIL" in checked.stdout
    ran = result["run"]
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (run_dir,) = (project / "artifacts" / "models" / name / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    assert metrics["status"] == "completed" and history["epoch"] == [0, 1]
    first, last = history["train_loss"]
    assert last < first, history
    assert history["learning_rate"] == pytest.approx([rate, rate])
    assert len(history[metric]) == 2


@pytest.mark.slow
def test_ambiguous_batch_is_refused_naming_the_map(project: Path):
    """Fields named unlike forward's parameters: exit 2, forward's parameters and the batch
    fields listed with the --map that settles it, no traceback, nothing written."""
    before = tree(project)
    result = engine(project, "new", "pairs", "--model", "fusion_model:FeatureFusionModel",
                    "--dataset", "pairs_data:Pairs")
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "cannot tell which batch field feeds forward's 'image', 'text'" in err
    assert "forward(image, text" in err
    assert 'batch["img_feats"]: float32[12]' in err and 'batch["y"]' in err
    assert "--map image=img_feats --map text=txt_feats" in err
    assert "Traceback" not in err
    assert tree(project) == before


def in_process(project: Path, *args: str) -> tuple[int, str, str]:
    """`engine ARGS` through the CLI's entry point in this process, from the project."""
    out, err = io.StringIO(), io.StringIO()
    # the project's own `recipes` package, not one another test imported
    saved = {k: sys.modules.pop(k) for k in list(sys.modules)
             if k == "recipes" or k.startswith("recipes.")}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(project)
            mp.delenv("ENGINE_RECIPES", raising=False)
            mp.syspath_prepend(str(project))
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = engine_cli.main(list(args))
    finally:
        for k in [k for k in sys.modules if k == "recipes" or k.startswith("recipes.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("model, dataset, what", [
    ("fusion_model:Missing", "fusion_data:FusionDataset", "'fusion_model' has no class 'Missing'"),
    ("broken_code:Net", "fusion_data:FusionDataset", "module 'broken_code' does not import"),
    ("no_such_module:Net", "fusion_data:FusionDataset", "module 'no_such_module' not found"),
    ("fusion_model", "fusion_data:FusionDataset", "--model needs MODULE:CLASS"),
    ("reg_code:NotAModel", "fusion_data:FusionDataset", "is not a torch.nn.Module subclass"),
    ("fusion_model:FeatureFusionModel", "reg_code:Regressor", "is not a Dataset"),
    ("fusion_model:FeatureFusionModel", "pairs_data:Pairs", "cannot tell which batch field"),
    ("odd_models:NoForward", "fusion_data:FusionDataset", "'odd_models:NoForward' has no forward"),
    # a single input dimension that forward runs with whatever the value: no guess is made
    ("odd_models:IgnoresBackbone", "fusion_data:FusionDataset",
     "cannot read IgnoresBackbone's 'backbone' from the data"),
])
def test_bad_specs_are_user_errors_and_write_nothing(project: Path, model: str, dataset: str,
                                                     what: str):
    """A missing class, a module that does not import or is absent, a spec without a class, a
    class of the wrong kind: exit 2 with one message naming it; no file written."""
    before = tree(project)
    code, out, err = in_process(project, "new", "bad", "--model", model, "--dataset", dataset)
    assert code == 2 and what in err, err
    assert tree(project) == before


@pytest.mark.parametrize("sets, what, where", [
    # keys the recipe would drop without a word
    (["model.nope=3"], "FeatureFusionModel takes no parameter 'nope'", "--set model.nope=3"),
    (["data.sise=3"], "FusionDataset takes no parameter 'sise'", "--set data.sise=3"),
    (["data.val_fraction=2"], "data.val_fraction must be a number between 0 and 1",
     "--set data.val_fraction=2"),
    (["train.learning_rate=abc"], "train.learning_rate must be a positive number",
     "--set train.learning_rate=abc"),
    # found by the staged recipe's config: named as what new would write, not the staging file
    (["train.epocs=3"], "unknown config key 'train.epocs'",
     "the recipes.toml section engine new would write"),
])
def test_bad_set_values_are_refused_naming_the_flag(project: Path, sets: list[str], what: str,
                                                    where: str):
    """--set that would be dropped, is out of range or is no number: exit 2, one message
    naming the flag, no traceback, nothing written."""
    before = tree(project)
    flags = [arg for s in sets for arg in ("--set", s)]
    code, out, err = in_process(project, "new", "bad", "--model",
                                "fusion_model:FeatureFusionModel", "--dataset",
                                "fusion_data:FusionDataset", *flags)
    assert code == 2, out + err
    assert what in err and f"where: {where}" in err, err
    assert "Traceback" not in err and "engine-new-" not in err
    assert tree(project) == before


def test_map_and_set_settle_what_the_data_cannot_tell(project: Path):
    """--map wires the fields, --set gives a size with no default; the written config keeps that
    field required, and check reports it once recipes.toml no longer sets it."""
    code, out, err = in_process(project, "new", "pairs_mapped", "--model",
                                "fusion_model:FeatureFusionModel", "--dataset",
                                "pairs_data:Pairs", "--map", "image=img_feats", "--map",
                                "text=txt_feats", "--set", "model.num_classes=3")
    assert code == 0, err
    assert 'image <- batch["img_feats"], text <- batch["txt_feats"] (--map)' in out
    assert "model.image_dim = 12: the last dimension of batch[\"img_feats\"]" in out
    config = (project / "recipes" / "pairs_mapped" / "config.py").read_text()
    assert "    num_classes: int  # required" in config
    registry = project / "recipes.toml"
    text = registry.read_text()
    assert "[pairs_mapped.model]\nimage_dim = 12\ntext_dim = 6\nnum_classes = 3\n" in text
    registry.write_text(text.replace("text_dim = 6\nnum_classes = 3\n", "text_dim = 6\n"))
    try:
        code, out, err = in_process(project, "check", "pairs_mapped")
    finally:
        registry.write_text(text)
    assert code == 2 and "missing config key 'model.num_classes'" in err, out + err


def test_records_split_parameter_and_regression(project: Path):
    """A dataclass record per sample (collated field by field), a `train` parameter that makes
    the validation set, float targets shaped like the output: MSE and MAE; check passes."""
    code, out, err = in_process(project, "new", "reg", "--model", "reg_code:Regressor",
                                "--dataset", "reg_code:Records")
    assert code == 0, err
    assert "features <- batch.features (by name); the target: batch.target" in out
    assert "model.features_dim = 5" in out and "mean squared error" in out
    data = (project / "recipes" / "reg" / "data.py").read_text()
    assert "Records(size=data.size, train=True)" in data
    assert "Records(size=data.size, train=False)" in data
    assert "collate_fn=collate" in data
    assert lint(project / "recipes" / "reg", project, "reg_code").returncode == 0
    code, out, err = in_process(project, "check", "reg")
    assert code == 0 and "20 ok, 0 warn, 0 FAIL" in out, out + err


def test_new_needs_a_kind_or_both_classes(project: Path):
    """Neither --kind nor --model, or --model without --dataset: exit 2, nothing written."""
    before = tree(project)
    for args in (["new", "x"], ["new", "x", "--model", "fusion_model:FeatureFusionModel"],
                 ["new", "x", "--kind", "cnn", "--map", "a=b"]):
        code, _, err = in_process(project, *args)
        assert code == 2 and err.startswith("error: "), err
    assert tree(project) == before


def test_sizes_found_by_the_one_fit_forward_takes(project: Path):
    """Sizes whose names point to no field: the one choice of the inputs' dimensions that
    forward runs with is taken, and said so."""
    code, out, err = in_process(project, "new", "short", "--model", "odd_models:ShortNames",
                                "--dataset", "fusion_data:FusionDataset", "--kind", "cnn")
    assert code == 0, err
    assert ('model.img_dim = 12: the last dimension of batch["image"], the one size of the '
            "inputs forward takes") in out
    assert 'model.txt_dim = 6: the last dimension of batch["text"]' in out
    # --kind picks optimizer and schedule, and the [train] values they read
    assert "kind cnn (given with --kind): SGD with Nesterov momentum" in out
    section = tomllib.loads((project / "recipes.toml").read_text())["short"]["train"]
    assert section["momentum"] == 0.9 and section["step_size"] == 3
    assert "build_optimizer=optimizers.sgd_nesterov" in (
        project / "recipes" / "short" / "__init__.py").read_text()


def test_a_failing_check_refuses_with_its_message(project: Path):
    """A parameter that gets no gradient: the gradients check's own message, exit 2, nothing
    written."""
    before = tree(project)
    code, out, err = in_process(project, "new", "unused", "--model", "odd_models:UnusedLayer",
                                "--dataset", "fusion_data:FusionDataset")
    assert code == 2, out + err
    assert "2 of 4 trainable parameters get no gradient" in err
    assert "text_proj.weight" in err
    # named as the recipe would be, not as the staging copy the checks ran on
    assert "recipes.unused.model.build_model" in err and "_engine_new" not in err
    assert tree(project) == before


def test_a_rate_that_fails_the_probe_is_refused(project: Path):
    """--set train.learning_rate too low to move the loss: the overfit probe's message and the
    falls per seed, exit 2, nothing written."""
    before = tree(project)
    code, out, err = in_process(project, "new", "slow", "--model",
                                "fusion_model:FeatureFusionModel", "--dataset",
                                "fusion_data:FusionDataset", "--set", "train.learning_rate=1e-9")
    assert code == 2, out + err
    assert "the loss does not fall when training on one fixed batch" in err
    assert "no learning rate passed the overfit probe for every seed" in err
    assert "1e-09: FAIL, FAIL, FAIL" in err
    assert tree(project) == before


def _fields(sample):
    from engine.tools import wire
    return wire.sample_fields(sample, "dataset[0]")


@pytest.mark.parametrize("sample, required, maps, inputs, target, mask", [
    # a tuple: by position, the last element the target when there is one more than forward takes
    (("X", "Y"), ["x"], {}, (("x", "0"),), "1", None),
    (("A", "B", "Y"), ["a", "b"], {}, (("a", "0"), ("b", "1")), "2", None),
    (("X",), ["x"], {}, (("x", "0"),), None, None),
    # a dict: by name; the one parameter left takes the one field that is no target
    ({"x": 1, "label": 2}, ["features"], {}, (("features", "x"),), "label", None),
    ({"tokens": 1, "scores": 2, "mask": 3}, ["tokens"], {}, (("tokens", "tokens"),), "scores",
     "mask"),
    ({"a": 1, "b": 2, "c": 3}, ["x"], {"x": "b", "target": "c"}, (("x", "b"),), "c", None),
])
def test_batch_fields_reach_forward(sample, required, maps, inputs, target, mask):
    """Fields are placed by name, by position or by --map; the target and a mask found."""
    from engine.tools import wire
    wiring = wire.wire(_fields(sample), required, [], maps)
    assert (wiring.inputs, wiring.target, wiring.mask) == (inputs, target, mask)


@pytest.mark.parametrize("sample, required, maps, words", [
    (("A", "B", "C", "D"), ["a"], {}, "--map a=0"),
    ({"p": 1, "q": 2, "y": 3}, ["a", "b"], {}, "--map a=p --map b=q"),
    ({"image": 1, "y": 2}, ["image"], {"image": "imag"}, "did you mean 'image'?"),
    ({"image": 1, "y": 2}, ["image"], {"imge": "image"}, "did you mean 'image'?"),
])
def test_what_cannot_be_placed_names_the_map(sample, required, maps, words):
    """An ambiguous batch or a --map naming no field or parameter: a UserError with the fix."""
    from engine.core.errors import UserError
    from engine.tools import wire
    with pytest.raises(UserError) as caught:
        wire.wire(_fields(sample), required, [], maps)
    assert words in caught.value.render()
