"""DDP through torchrun on CPU (gloo): two processes on this machine.

Each test starts `python -m torch.distributed.run --standalone --nproc_per_node=2 -m engine ...`
(about 10 s each: three Python processes import torch), with its cwd and TMPDIR in tmp_path
(torchrun leaves torchelastic_* folders in TMPDIR).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from engine import TrainConfig, UserError, fit
from engine.core.distributed import World, from_env, shard
from tests.ddp_recipe import Probe, ProbeConfig, build_model
from tests.ddp_recipe import recipe as probe_recipe

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

REGISTRY = """\
[ddp_probe]
recipe = "tests.ddp_recipe:recipe"
description = "tiny regression for the distributed tests"

[ddp_probe.train]
epochs = 2
batch_size = 8
learning_rate = 1e-2
device = "cpu"
"""


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path), OMP_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1",
               PYTHONFAULTHANDLER="1")   # a rank that aborts prints its Python stacks
    return env


def _torchrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "engine", *args]


def torchrun(tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return run_dumping_on_hang(_torchrun_cmd(*args), tmp_path, timeout)


def run_dumping_on_hang(cmd: list[str], tmp_path: Path,
                        timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` (torchrun and its ranks, in a session of their own). Past `timeout`, every
    process of it gets SIGABRT, so faulthandler (PYTHONFAULTHANDLER) prints where each one
    waited, and the test fails showing that, instead of a bare TimeoutExpired."""
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{' '.join(cmd[2:])} still ran after {timeout:.0f} s; the stacks of "
                    f"its processes:\n{err[-12000:]}\nstdout:\n{out[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def probe_registry(tmp_path: Path) -> str:
    path = tmp_path / "recipes.toml"
    path.write_text(REGISTRY)
    return str(path)


def run_dirs(out: Path, name: str) -> list[Path]:
    root = out / "models" / name / "runs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_torchrun_autoencoder_one_run_dir(tmp_path):
    """torchrun with 2 ranks: exit 0, one run directory with one metrics.json and train.log,
    announced once, and checkpoints that load into the plain model (no `module.` prefix)."""
    out = tmp_path / "out"
    proc = torchrun(tmp_path, "run", "autoencoder", "--recipes", str(ROOT / "recipes.toml"),
                    "--set", "train.epochs=2", "--set", "data.num_models=256",
                    "--set", "train.batch_size=32", "--set", "model.hidden_dim=32",
                    "--set", "train.grad_accum_steps=2", "--set", 'train.device="cpu"',
                    "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = run_dirs(out, "autoencoder")
    assert len(dirs) == 1, dirs
    run_dir = dirs[0]
    announced = [line for line in proc.stdout.splitlines() if line.startswith("run directory:")]
    assert announced == [f"run directory: {run_dir}"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["run_id"] == run_dir.name
    assert metrics["history"]["epoch"] == [0, 1]
    log = (run_dir / "train.log").read_text()
    assert log.count("of recipe autoencoder") == 1
    assert not list(run_dir.parent.glob(".write-test*"))
    # checkpoints hold the unwrapped model's state, loadable without DDP
    from recipes.autoencoder.recipe import AutoencoderConfig, DataConfig, ModelConfig
    from recipes.autoencoder.recipe import build_model as build_ae
    cfg = AutoencoderConfig(model=ModelConfig(hidden_dim=32), data=DataConfig(num_models=256))
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["world_size"] == 2
    for state in (last["model"], torch.load(run_dir / "model.pt", weights_only=True)):
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
        build_ae(cfg).load_state_dict(state)


def test_two_ranks_batch_b_equal_one_process_batch_2b(tmp_path):
    """Two ranks with batch b end with identical weights, equal (within float tolerance) to
    one process with batch 2b; same history length, epochs and losses.

    Both runs also skip one batch (nan_policy = "skip"): a NaN loss on rank 1 alone at step 2
    must make every rank skip it (else DDP's gradient reductions go out of step and hang),
    which is what one process does with that global batch."""
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    proc = torchrun(tmp_path, "run", "ddp_probe", "--recipes", probe_registry(tmp_path),
                    "--set", f'probe.dump_dir="{dump}"', "--set", 'train.nan_policy="skip"',
                    "--set", "probe.nan_rank=1", "--set", "probe.nan_step=2",
                    "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(dump / "rank0.pt", weights_only=True)
    rank1 = torch.load(dump / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    solo_dump = tmp_path / "solo"
    solo_dump.mkdir()
    cfg = ProbeConfig(train=TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2,
                                        device="cpu", nan_policy="skip"),
                      probe=Probe(dump_dir=str(solo_dump), nan_rank=0, nan_step=2))
    solo = fit(probe_recipe, cfg)
    single = torch.load(solo_dump / "rank0.pt", weights_only=True)
    start = build_model(cfg).state_dict()
    for key in rank0:
        assert not torch.allclose(start[key], single[key])   # training moved the weights
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)

    (run_dir,) = run_dirs(out, "ddp_probe")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert history["epoch"] == solo.history["epoch"] == [0, 1]
    assert history["nonfinite_steps"] == solo.history["nonfinite_steps"] == [1, 0]
    for column in ("train_loss", "val_loss"):
        assert len(history[column]) == len(solo.history[column])
        torch.testing.assert_close(torch.tensor(history[column]),
                                   torch.tensor(solo.history[column]), rtol=1e-4, atol=1e-6)


def test_no_gloo_thread_outlives_a_torchrun_run(tmp_path):
    """After `engine run` under torchrun returns, no rank still runs gloo's threads: the process
    group is gone, not left to the interpreter's exit (where live gloo threads were seen to
    abort rank 1 with SIGABRT, about one torchrun test in 20). torch.distributed.nn.functional,
    imported with torch._dynamo at the first optimizer, would hold the group otherwise."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("thread names are read from /proc")
    script = tmp_path / "threads_after_run.py"
    script.write_text(textwrap.dedent("""\
        import glob, json, os, sys
        from engine.cli import main
        code = main(sys.argv[1:])
        names = sorted(open(p).read().strip() for p in glob.glob("/proc/self/task/*/comm"))
        with open(f"threads{os.environ['RANK']}.json", "w") as f:
            json.dump({"code": code, "threads": names}, f)
        """))
    proc = run_dumping_on_hang(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), "run", "ddp_probe", "--recipes", probe_registry(tmp_path),
         "--output-dir", str(tmp_path / "out")], tmp_path, 90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        after = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert after["code"] == 0
        assert not [t for t in after["threads"] if "gloo" in t], (rank, after["threads"])


def test_error_on_one_rank_ends_every_rank(tmp_path):
    """forward_batch raising on rank 1 at step 3 ends the whole job with a non-zero exit code
    within seconds (no hang), names the error, and leaves rank 0's run marked failed."""
    out = tmp_path / "out"
    started = time.monotonic()
    proc = torchrun(tmp_path, "run", "ddp_probe", "--recipes", probe_registry(tmp_path),
                    "--set", "probe.fail_rank=1", "--set", "probe.fail_step=3",
                    "--set", "train.epochs=20", "--output-dir", str(out), timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "probe failure on rank 1 at step 3" in proc.stderr
    assert elapsed < 60
    (run_dir,) = run_dirs(out, "ddp_probe")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert "rank 0: a collective failed" in metrics["error"]["message"]


def test_sigterm_to_torchrun_interrupts_with_resumable_checkpoint(tmp_path):
    """SIGTERM to torchrun reaches every rank: the run stops at a step boundary, metrics.json
    says interrupted, and last.pt resumes (here in one process) to the end."""
    out = tmp_path / "out"
    cmd = _torchrun_cmd("run", "ddp_probe", "--recipes", probe_registry(tmp_path),
                        "--set", "train.epochs=40", "--set", "probe.sleep_per_step=0.02",
                        "--set", "train.log_every_n_steps=1", "--output-dir", str(out))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dirs = run_dirs(out, "ddp_probe")
            if dirs and (dirs[0] / "checkpoints" / "last.pt").exists():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run did not write its first checkpoint")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    (run_dir,) = run_dirs(out, "ddp_probe")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted", (metrics["status"], stderr[-2000:])
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    done = last["loop"]["epoch"]
    assert 0 < done < 40 and last["world_size"] == 2
    cfg = ProbeConfig(train=TrainConfig(epochs=done + 2, batch_size=8, learning_rate=1e-2,
                                        device="cpu"))
    if last["loop"]["batch"] > 0:
        # mid-epoch: its data order is that of 2 shards; one process is refused (exit 2)
        with pytest.raises(UserError, match="2 processes"):
            fit(probe_recipe, cfg, resume=run_dir / "checkpoints" / "last.pt")
    else:
        resumed = fit(probe_recipe, cfg, resume=run_dir / "checkpoints" / "last.pt")
        assert resumed.status == "completed"
        assert resumed.history["epoch"][-1] == done + 1


DECIDE = """\
[ddp_decide]
recipe = "tests.ddp_recipe:deciding"

[ddp_decide.train]
epochs = 30
batch_size = 8
learning_rate = 0.1
device = "cpu"
lr_patience = 0
lr_decay_factor = 0.5
early_stopping_patience = 3
log_every_n_steps = 1
"""


def _decide_registry(tmp_path: Path) -> str:
    path = tmp_path / "decide.toml"
    path.write_text(DECIDE)
    return str(path)


def _val_loss_on_shard(weights: dict, rank: int) -> float:
    from tests.ddp_recipe import _uneven_loaders
    model = build_model(ProbeConfig())
    model.load_state_dict(weights)
    x, y = _uneven_loaders(ProbeConfig(train=TrainConfig(batch_size=8))).val.dataset.tensors
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x[rank::2]), y[rank::2]))


def test_every_rank_takes_the_same_decisions(tmp_path):
    """Two ranks whose shards differ (rank 1's targets are 3x noisier), ReduceLROnPlateau with
    lr_patience 0 and early stopping with patience 3: every rank ends with the same history,
    learning rate, stop epoch and status (each rank's own record, written from FIT_END), and
    the run did cut the rate and stop early, so the decisions were made, not defaulted."""
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    proc = torchrun(tmp_path, "run", "ddp_decide", "--recipes", _decide_registry(tmp_path),
                    "--set", f'probe.dump_dir="{dump}"', "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert rank0["status"] == "early_stopped" and rank0["epoch"] < 30
    assert rank0["lr"] < 0.1 and min(rank0["history"]["learning_rate"]) < 0.1
    (run_dir,) = run_dirs(out, "ddp_decide")
    assert json.loads((run_dir / "metrics.json").read_text())["history"] == rank0["history"]
    # the ranks' own validation losses differ: alone, they would not decide alike
    weights = torch.load(dump / "rank0.pt", weights_only=True)
    assert _val_loss_on_shard(weights, 1) > 2 * _val_loss_on_shard(weights, 0)


def test_a_two_rank_run_stopped_mid_epoch_resumes_to_the_run_left_alone(tmp_path):
    """Rank 0 signals itself when step 9 ends (4 steps an epoch): both ranks stop at a step
    boundary inside epoch 3 (last.pt: world_size 2, loop.batch > 0). One process is refused
    (exit 2); the same torchrun command with --resume ends with the weights (torch.equal, on
    both ranks), history, learning rate and decisions of the same 2-rank run left alone."""
    registry, sets = _decide_registry(tmp_path), ("--set", "train.epochs=5", "--set",
                                                   "train.early_stopping_patience=0")
    ref_out, ref_dump, dump = tmp_path / "ref", tmp_path / "ref-dump", tmp_path / "dump"
    ref_dump.mkdir()
    dump.mkdir()
    proc = torchrun(tmp_path, "run", "ddp_decide", "--recipes", registry, *sets, "--set",
                    f'probe.dump_dir="{ref_dump}"', "--output-dir", str(ref_out))
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "out"
    proc = torchrun(tmp_path, "run", "ddp_decide", "--recipes", registry, *sets,
                    "--set", "probe.signal_step=9", "--output-dir", str(out))
    assert proc.returncode != 0
    (run_dir,) = run_dirs(out, "ddp_decide")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["loop"]["epoch"] == 2
    assert last["loop"]["step"] in (9, 10) and last["loop"]["batch"] > 0

    from tests.ddp_recipe import deciding
    cfg = ProbeConfig(train=TrainConfig(epochs=5, batch_size=8, learning_rate=0.1,
                                        device="cpu", lr_patience=0, lr_decay_factor=0.5))
    with pytest.raises(UserError, match="2 processes"):
        fit(deciding, cfg, resume=run_dir / "checkpoints" / "last.pt", name="ddp_decide")

    proc = torchrun(tmp_path, "run", "ddp_decide", "--recipes", registry, *sets,
                    "--set", f'probe.dump_dir="{dump}"', "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        resumed = torch.load(dump / f"rank{r}.pt", weights_only=True)
        reference = torch.load(ref_dump / f"rank{r}.pt", weights_only=True)
        for key in reference:
            assert torch.equal(resumed[key], reference[key]), (r, key)
        assert (json.loads((dump / f"rank{r}.json").read_text())
                == json.loads((ref_dump / f"rank{r}.json").read_text()))
    (ref_dir,) = run_dirs(ref_out, "ddp_decide")
    m, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert m["status"] == ref["status"] == "completed"
    assert (m["history"], m["best"]) == (ref["history"], ref["best"])


def test_world_from_env_and_val_shards(monkeypatch):
    """from_env reads torchrun's variables; validation shards cover each sample exactly once."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env() == World(rank=2, world_size=3, local_rank=1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not from_env().active
    from torch.utils.data import DataLoader, TensorDataset
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=4)
    seen = []
    for rank in range(3):
        for (x,) in shard(loader, World(rank=rank, world_size=3), 0, "val"):
            seen += x.tolist()
    assert sorted(seen) == list(range(10))
    tiny = DataLoader(TensorDataset(torch.arange(2)), batch_size=4)
    with pytest.raises(UserError, match="smaller than the number of processes"):
        shard(tiny, World(rank=0, world_size=3), 0, "val")
