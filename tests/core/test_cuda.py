"""The CUDA path: bf16, fp16 with a GradScaler, torch.compile, pinned memory with non-blocking
copies, and NCCL through torchrun. Skipped where no CUDA device is present.

    python -m pytest tests/core/test_cuda.py -s     # -s shows the fp32 / bf16 step times
"""

from __future__ import annotations

import json
import time

import attrs
import pytest
import torch

import steps
from engine import Event, TrainConfig, fit
from engine.core.events import listens_to
from tests.ddp_recipe import Probe, ProbeConfig, build_model, recipe

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_cfg(**train) -> ProbeConfig:
    base = dict(epochs=5, batch_size=8, learning_rate=1e-2, device="cuda")
    return ProbeConfig(train=TrainConfig(**{**base, **train}), probe=Probe(n_train=128))


def capture_run():
    seen = {}

    @listens_to(Event.FIT_START, Event.FIT_END)
    def capture(event, state):
        seen[event] = state
    return seen, capture


def test_bf16_on_cuda_learns():
    result = fit(recipe, cuda_cfg(precision="bf16"))
    losses = result.history["train_loss"]
    assert result.status == "completed" and losses[-1] < 0.8 * losses[0]
    assert next(result.model.parameters()).is_cuda


def test_fp16_uses_a_grad_scaler_and_learns(tmp_path):
    """fp16 on CUDA: forward_batch's output is float16 under autocast, and the GradScaler took
    part in the optimizer steps: update() after each step either grew its growth tracker (the
    steps since the last overflow) or, on an overflow, halved the scale from 2**16; a scaler
    created and never used keeps tracker 0 and scale 2**16. last.pt holds that state."""
    dtypes = []

    def recording(model, batch, ctx):
        if ctx.training:
            dtypes.append(model(batch[0]).dtype)
        return recipe.forward_batch(model, batch, ctx)

    seen, capture = capture_run()
    cfg = cuda_cfg(precision="fp16")
    result = fit(attrs.evolve(recipe, forward_batch=recording), cfg, run_dir=tmp_path / "run",
                 callbacks=(capture,))
    state = seen[Event.FIT_END]
    scaler = state.run.scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    assert set(dtypes) == {torch.float16}
    steps_taken = state.step
    assert steps_taken == 5 * (128 // 8)
    tracker, scale = scaler._get_growth_tracker(), scaler.get_scale()
    # update() ran: the steps since the last overflow (if any) grew the tracker
    assert 0 < tracker <= steps_taken and scale <= 2.0 ** 16, (tracker, scale)
    losses = result.history["train_loss"]
    assert result.status == "completed" and losses[-1] < 0.8 * losses[0]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["scaler"]["_growth_tracker"] == tracker and last["scaler"]["scale"] == scale


def test_pinned_memory_and_batches_on_the_device():
    """On CUDA the loaders pin memory and forward_batch receives tensors on the GPU."""
    devices = []

    def checking_forward(model, batch, ctx):
        devices.append(batch[0].device.type)
        return recipe.forward_batch(model, batch, ctx)

    seen, capture = capture_run()
    fit(attrs.evolve(recipe, forward_batch=checking_forward), cuda_cfg(epochs=1),
        callbacks=(capture,))
    loaders = seen[Event.FIT_START].run.loaders
    assert loaders.train.pin_memory and loaders.val.pin_memory
    assert devices and set(devices) == {"cuda"}
    batch = steps.move_to_device(next(iter(loaders.train)), torch.device("cuda"), True)
    assert batch[0].is_cuda


def test_compile_on_cuda_checkpoints_the_plain_module(tmp_path):
    cfg = cuda_cfg(epochs=2, compile=True)
    result = fit(recipe, cfg, run_dir=tmp_path / "run")
    assert result.status == "completed"
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    build_model(cfg).load_state_dict(state)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL with two ranks needs 2 GPUs")
def test_nccl_two_ranks_identical_weights(tmp_path):
    from tests.core.test_distributed import probe_registry, run_dirs, torchrun
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    proc = torchrun(tmp_path, "run", "ddp_probe", "--recipes", probe_registry(tmp_path),
                    "--set", 'train.device="cuda"', "--set", f'probe.dump_dir="{dump}"',
                    "--output-dir", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = run_dirs(out, "ddp_probe")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    rank0 = torch.load(dump / "rank0.pt", weights_only=True)
    rank1 = torch.load(dump / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def _step_time(precision: str, n_steps: int = 50) -> tuple[float, float]:
    """Mean seconds per training step of a 4-layer MLP (width 2048, batch 512), and the loss."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(2048, 2048),
                                                               torch.nn.GELU())]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = list(model.parameters())
    x = torch.randn(512, 2048, device=device)
    loss = None
    for i in range(n_steps + 10):
        if i == 10:                      # warm-up steps excluded
            torch.cuda.synchronize()
            start = time.perf_counter()
        with steps.autocast(device, precision):
            loss = (model(x) - x).pow(2).mean()
        steps.backward(loss)
        steps.optimizer_step(opt, params)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n_steps, float(loss)


def test_step_time_fp32_vs_bf16():
    """The figures for docs/distributed.md; bf16 must train to a finite loss near fp32's."""
    fp32, fp32_loss = _step_time("fp32")
    bf16, bf16_loss = _step_time("bf16")
    print(f"\nstep time fp32 {fp32 * 1e3:.2f} ms, bf16 {bf16 * 1e3:.2f} ms "
          f"({fp32 / bf16:.2f}x); loss fp32 {fp32_loss:.4f} bf16 {bf16_loss:.4f} "
          f"on {torch.cuda.get_device_name()}")
    assert abs(bf16_loss - fp32_loss) < 0.1 * fp32_loss + 1e-3
