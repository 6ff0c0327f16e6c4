"""Mixed precision on CPU: bf16 autocast reaches forward_batch during fit and learns; fp16 is
refused with a clear message.
Also `compile = true`: checkpoints hold the plain module's state."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

import steps
from engine import TrainConfig, fit
from engine.core.errors import UserError
from tests.ddp_recipe import Probe, ProbeConfig, build_model, recipe

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def probe_cfg(**train) -> ProbeConfig:
    base = dict(epochs=6, batch_size=8, learning_rate=1e-2, device="cpu")
    return ProbeConfig(train=TrainConfig(**{**base, **train}), probe=Probe(n_train=128))


def test_autocast_and_scaler_pieces():
    """fp32 is a no-op context; bf16 runs matmuls in bfloat16; only fp16 gets a GradScaler."""
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with steps.autocast(CPU, "fp32"):
        assert layer(x).dtype == torch.float32
    with steps.autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    assert steps.make_scaler(CPU, "fp32") is None
    assert steps.make_scaler(CPU, "bf16") is None


def _recording(dtypes: list):
    """The probe recipe with a forward_batch that records its model output's dtype in training
    (under the loop's autocast, if any) and the loss's."""
    def forward(model, batch, ctx):
        loss = recipe.forward_batch(model, batch, ctx)
        if ctx.training:
            dtypes.append((model(batch[0]).dtype, loss.dtype))
        return loss
    return attrs.evolve(recipe, forward_batch=forward)


@pytest.mark.parametrize(("precision", "output"), [("bf16", torch.bfloat16),
                                                    ("fp32", torch.float32)])
def test_precision_reaches_forward_batch_during_fit(precision, output):
    """Inside forward_batch during fit, the model's output is bfloat16 with precision "bf16"
    (the loop's autocast) and float32 with "fp32", on every training step; the weights stay
    fp32, and bf16 still learns."""
    dtypes: list = []
    result = fit(_recording(dtypes), probe_cfg(precision=precision, epochs=3))
    assert result.status == "completed"
    assert len(dtypes) >= 3 * (128 // 8)   # every step (and the preflight batch)
    assert {out for out, _ in dtypes} == {output}
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    losses = result.history["train_loss"]
    assert losses[-1] < 0.8 * losses[0]


def test_fp16_on_cpu_is_refused_by_fit():
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        fit(recipe, probe_cfg(precision="fp16"))


def test_fp16_on_cpu_exits_2_with_a_clear_message(tmp_path):
    """The CLI: exit code 2, one message block, no traceback, no run directory."""
    (tmp_path / "recipes.toml").write_text(
        '[ddp_probe]\nrecipe = "tests.ddp_recipe:recipe"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "ddp_probe", "--set",
                           'train.precision="fp16"', "--set", 'train.device="cpu"',
                           "--output-dir", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: fp16 needs a CUDA device" in proc.stderr
    assert 'hint: use precision = "bf16" on CPU' in proc.stderr
    assert "Traceback" not in proc.stderr
    runs = tmp_path / "out" / "models" / "ddp_probe" / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


def _check_compiled_run(tmp_path, compile_fn, monkeypatch):
    monkeypatch.setattr(torch, "compile", compile_fn)
    cfg = probe_cfg(epochs=2, compile=True)
    result = fit(recipe, cfg, run_dir=tmp_path / "run")
    plain = fit(recipe, probe_cfg(epochs=2))
    assert result.status == "completed"
    torch.testing.assert_close(torch.tensor(result.history["val_loss"]),
                               torch.tensor(plain.history["val_loss"]), rtol=1e-4, atol=1e-5)
    for path in (tmp_path / "run" / "model.pt", tmp_path / "run" / "checkpoints" / "last.pt"):
        data = torch.load(path, weights_only=True)
        state = data.get("model", data)
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state), list(state)
        build_model(cfg).load_state_dict(state)    # loads into the plain module


def test_compile_wraps_and_checkpoints_the_plain_module(tmp_path, monkeypatch):
    """compile = true calls torch.compile (here with the eager backend: Dynamo traces, no C++
    build); checkpoints hold keys without `_orig_mod.`, and the run matches the plain one."""
    calls = []
    real = torch.compile

    def compile_eager(model, **kwargs):
        calls.append(model)
        return real(model, **{**kwargs, "backend": "eager"})

    _check_compiled_run(tmp_path, compile_eager, monkeypatch)
    assert len(calls) == 1


@pytest.mark.skipif(os.environ.get("ENGINE_TEST_COMPILE", "") in ("", "0"),
                    reason="inductor on CPU compiles C++ (80 s on a 2-core machine): "
                           "set ENGINE_TEST_COMPILE=1")
def test_compile_with_inductor_on_cpu(tmp_path, monkeypatch):
    """The default torch.compile backend (inductor) on CPU."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _check_compiled_run(tmp_path, functools.partial(torch.compile), monkeypatch)
