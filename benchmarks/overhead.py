"""The engine's overhead next to a hand-written loop, PyTorch Lightning and PyTorch Ignite.

    python benchmarks/overhead.py                      # every workload, 13 rounds
    python benchmarks/overhead.py --quick              # a smoke run (< 60 s)
    python benchmarks/overhead.py --workloads tiny --rounds 21 --explain engine

Every runner does the same work from the same pieces (the workload's `Recipe`: model, loaders,
forward_batch): Adam, gradient clipping (clip_grad_norm_ at 1.0), validation after every epoch,
ReduceLROnPlateau on the validation loss, the training loss summed on the device, and each
epoch's data order drawn from a sampler seeded with (seed, epoch) (Lightning leaves an epoch's
iterator unfinished, so a shuffling loader would drift). Runners run interleaved in rounds
(A B C D E, A B C D E, ...); the first round is a warm-up and is discarded. Per runner the table
has the median microseconds per optimizer step (whole fit, set-up included), the median of the
per-round ratios to the hand-written loop, and the Python and C function calls per step beyond
the hand-written loop, counted with cProfile: (calls of a 3-epoch fit - calls of a 1-epoch fit)
/ extra steps. The call count does not depend on the machine's load; the timings do.
Each runner's optimizer-step count (Adam's own counter) must equal the hand-written loop's and
its validation loss must fall below the untrained model's; otherwise the run fails loudly.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import itertools
import json
import logging
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

from engine import Loaders, Recipe, StepContext, TrainConfig, fit, wait_for_plots  # noqa: E402
from engine.core.distributed import rebuild_loader  # noqa: E402
from steps import batch_size_of, move_to_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLIP = 1.0
# (workload, runner) -> (most extra calls per step, largest median ratio); None: no target
# (the goals of the fast-default-path issue: callbacks off within 1.03x and +15 calls per step;
# with its run directory, the CLI path, within 1.10x, on every workload)
WORKLOADS = ("tiny", "small", "research", "ranking_v2")
TARGETS = {**{(w, "engine"): (15, 1.03) for w in WORKLOADS},
           **{(w, "engine+callbacks"): (None, 1.10) for w in WORKLOADS},
           **{(w, "engine+callbacks+plot"): (None, 1.10) for w in WORKLOADS}}


class BenchFailure(Exception):
    """A runner did different work, or did not learn: its figures mean nothing."""


# --- workloads: an engine Recipe and config each, whose pieces every runner uses ---------------

@attrs.frozen
class Workload:
    """A model, its data and its loss; `deterministic`: every runner must reach the same weights
    (no dropout, no random draws outside the seeded sampler)."""

    name: str
    description: str
    recipe: Recipe
    cfg: Any
    deterministic: bool
    tensor_loss: bool    # forward_batch returns the loss tensor itself, not a StepOutput
    workdir: Path

    @property
    def epochs(self) -> int:
        return self.cfg.train.epochs

    @property
    def batch_size(self) -> int:
        return self.cfg.train.batch_size

    def with_epochs(self, epochs: int) -> Workload:
        return attrs.evolve(self, cfg=self.cfg_for(epochs))

    def cfg_for(self, epochs: int) -> Any:
        return attrs.evolve(self.cfg, train=attrs.evolve(self.cfg.train, epochs=epochs))


@attrs.frozen
class MLPConfig:
    train: TrainConfig = attrs.Factory(TrainConfig)
    widths: tuple = (32, 64, 1)
    samples: int = 16384


@attrs.frozen
class Outcome:
    steps: int                # optimizer steps, read from Adam's own counter
    val_losses: list          # one per epoch


def seeded(loader: Any, seed: int) -> Any:
    """`loader` over a sampler whose order is drawn from (seed, epoch), set by `set_epoch`:
    the engine and Lightning call it on such samplers, the others call it themselves."""
    sampler = DistributedSampler(loader.dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return rebuild_loader(loader, sampler=sampler)


@functools.lru_cache(maxsize=8)
def _mlp_data(widths: tuple, samples: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = widths[0], widths[-1]
    n = samples + samples // 8
    x = torch.randn(n, d_in, generator=g)
    mix = torch.randn(d_in, max(d_out, 2), generator=g) / d_in ** 0.5
    if d_out == 1:
        y = torch.tanh(x @ mix).sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    else:
        y = (torch.tanh(x @ mix) + 0.3 * torch.randn(n, d_out, generator=g)).argmax(1)
    return x[:samples], y[:samples], x[samples:], y[samples:]


def _mlp_model(cfg: MLPConfig) -> nn.Module:
    torch.manual_seed(cfg.train.seed)
    layers: list[nn.Module] = []
    for a, b in zip(cfg.widths[:-1], cfg.widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _mlp_loaders(cfg: MLPConfig) -> Loaders:
    x, y, xv, yv = _mlp_data(cfg.widths, cfg.samples, cfg.train.seed)
    b = cfg.train.batch_size
    return Loaders(train=seeded(DataLoader(TensorDataset(x, y), batch_size=b), cfg.train.seed),
                   val=DataLoader(TensorDataset(xv, yv), batch_size=b))


def _mse(model: nn.Module, batch: list, ctx: StepContext) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _cross_entropy(model: nn.Module, batch: list, ctx: StepContext) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def make_workloads(work: Path, device: str, precision: str, quick: bool) -> dict:
    """tiny, small and (when `recipes.ranking_v2` imports) ranking_v2."""
    def train(epochs: int, batch: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=batch, learning_rate=1e-3,
                           gradient_clip_value=CLIP, early_stopping_patience=0, seed=0,
                           device=device, precision=precision, output_dir=str(work))

    out = {}
    # research: the set-up of the issue that set the goals (validation after every epoch)
    for name, widths, batch, samples, epochs, loss in (
            ("tiny", (32, 64, 1), 64, 8192, 5, _mse),
            ("small", (256, 512, 512, 10), 128, 4096, 4, _cross_entropy),
            ("research", (64, 128, 10), 64, 3200, 10, _cross_entropy)):
        if quick:
            samples, epochs = samples // 16, 2
        recipe = Recipe(name=f"bench_{name}", config=MLPConfig, build_model=_mlp_model,
                        build_loaders=_mlp_loaders, forward_batch=loss)
        cfg = MLPConfig(train=train(epochs, batch), widths=widths, samples=samples)
        out[name] = Workload(name, f"MLP {'-'.join(map(str, widths))}, batch {batch}, "
                             f"{samples} samples", recipe, cfg, True, True, work)
    try:
        import recipes.ranking_v2 as rv
    except ImportError as exc:
        print(f"ranking_v2 left out: {exc}", file=sys.stderr)
        return out

    def ranking_loaders(cfg: Any) -> Loaders:
        loaders = rv.build_loaders(cfg)
        return Loaders(train=seeded(loaders.train, cfg.train.seed), val=loaders.val)

    defaults = rv.RankingConfig()
    data = attrs.evolve(defaults.data, synthetic_datasets=100) if quick else defaults.data
    cfg = rv.RankingConfig(train=train(2 if quick else 10, defaults.train.batch_size), data=data)
    # the recipe's own baselines callback (once per fit, not per step) is left out: the peers
    # would not compute baselines
    recipe = attrs.evolve(rv.recipe, build_loaders=ranking_loaders, callbacks=())
    out["ranking_v2"] = Workload("ranking_v2", "ranking_v2's similarity transformer on its "
                                 "default synthetic data", recipe, cfg, False, False, work)
    return out


# --- runners: each builds from the workload's pieces, trains, and returns an Outcome -------------

def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _build(w: Workload, cfg: Any) -> tuple[nn.Module, Loaders, torch.device]:
    """What `fit` builds first, in the same order (so the same random draws)."""
    _seed(cfg.train.seed)
    model = w.recipe.build_model(cfg)
    loaders = w.recipe.build_loaders(cfg)
    device = torch.device(cfg.train.device)
    if device.type == "cuda":   # fit pins its loaders' memory on CUDA: the same here
        loaders = Loaders(train=rebuild_loader(loaders.train, pin_memory=True),
                          val=rebuild_loader(loaders.val, pin_memory=True))
    return model.to(device), loaders, device


def _optim(model: nn.Module, train: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=train.lr_decay_factor, patience=train.lr_patience)
    return optimizer, plateau


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return None
    return torch.autocast(device.type, dtype=torch.bfloat16)


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    first = optimizer.param_groups[0]["params"][0]
    return int(optimizer.state[first]["step"]) if first in optimizer.state else 0


def validate(w: Workload, model: nn.Module, loader: Any, device: torch.device, precision: str,
             epoch: int) -> float:
    """The sample-weighted mean validation loss, read once."""
    ctx = StepContext(device, False, epoch, 0)
    amp = _autocast(device, precision)
    total, n = torch.zeros((), device=device), 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            if device.type != "cpu":
                batch = move_to_device(batch, device, True)
            with amp or contextlib.nullcontext():
                out = w.recipe.forward_batch(model, batch, ctx)
            k = batch_size_of(batch)
            total += (out if w.tensor_loss else out.loss).float() * k
            n += k
    model.train()
    return total.item() / n


def initial_val_loss(w: Workload) -> float:
    model, loaders, device = _build(w, w.cfg)
    return validate(w, model, loaders.val, device, w.cfg.train.precision, 0)


def run_hand(w: Workload, epochs: int) -> Outcome:
    """The limit: a plain loop with no host sync per step."""
    cfg = w.cfg_for(epochs)
    train = cfg.train
    model, loaders, device = _build(w, cfg)
    optimizer, plateau = _optim(model, train)
    params, forward, clip = list(model.parameters()), w.recipe.forward_batch, CLIP
    move, amp, tensor_loss = device.type != "cpu", _autocast(device, train.precision), \
        w.tensor_loss
    val_losses = []
    for epoch in range(epochs):
        loaders.train.sampler.set_epoch(epoch)
        model.train()
        ctx = StepContext(device, True, epoch, 0)
        total = torch.zeros((), device=device)
        for batch in loaders.train:
            if move:
                batch = move_to_device(batch, device, True)
            if amp is None:
                out = forward(model, batch, ctx)
            else:
                with amp:
                    out = forward(model, batch, ctx)
            loss = out if tensor_loss else out.loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
        val_losses.append(validate(w, model, loaders.val, device, train.precision, epoch))
        plateau.step(val_losses[-1])
    return Outcome(adam_steps(optimizer), val_losses)


def run_engine(w: Workload, epochs: int, run_dir: Path | None = None) -> Outcome:
    """fit() without a run directory: no writers, no files (the callbacks off)."""
    result = fit(w.recipe, w.cfg_for(epochs), run_dir=run_dir)
    if result.status != "completed":
        raise BenchFailure(f"{w.name}/engine: fit ended {result.status}: {result.error}")
    return Outcome(adam_steps(result.state.run.optimizer), list(result.history["val_loss"]))


_RUN_NUMBER = itertools.count()


def run_engine_callbacks(w: Workload, epochs: int) -> Outcome:
    """fit() with a run directory: its default writers (metrics.json, train.log, progress bar,
    plot) and checkpoints. Its console log goes to /dev/null, not into the table."""
    run_dir = w.workdir / "runs" / f"run-{next(_RUN_NUMBER)}"
    with contextlib.redirect_stdout(_devnull()):
        return run_engine(w, epochs, run_dir)


def run_engine_callbacks_plot(w: Workload, epochs: int) -> Outcome:
    """As engine+callbacks, and then waits for metrics.png (drawn by the plot helper process):
    what `python -m engine run` waits for before it returns."""
    out = run_engine_callbacks(w, epochs)
    wait_for_plots()
    return out


@functools.cache
def _devnull() -> Any:
    # one stream for the whole process: each run's console log is pointed at it (it is
    # sys.stdout when the run starts), and none is closed while a later run still writes
    return open(os.devnull, "w")  # noqa: SIM115


@functools.cache
def _lightning_module() -> type:
    import lightning.pytorch as pl

    class BenchModule(pl.LightningModule):   # Lightning needs a subclass
        def __init__(self, w: Workload, net: nn.Module, train: TrainConfig) -> None:
            super().__init__()
            self.net, self.w, self.train_cfg = net, w, train
            self.forward_batch, self.tensor_loss = w.recipe.forward_batch, w.tensor_loss
            self.val_losses: list[float] = []

        def on_train_epoch_start(self) -> None:
            self.loss_sum = torch.zeros((), device=self.device)
            self.ctx = StepContext(self.device, True, self.current_epoch, 0)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            out = self.forward_batch(self.net, batch, self.ctx)
            loss = out if self.tensor_loss else out.loss
            self.loss_sum += loss.detach()
            return loss

        def on_validation_epoch_start(self) -> None:
            self.val_sum, self.val_n = torch.zeros((), device=self.device), 0
            self.val_ctx = StepContext(self.device, False, self.current_epoch, 0)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            out = self.forward_batch(self.net, batch, self.val_ctx)
            k = batch_size_of(batch)
            self.val_sum += (out if self.tensor_loss else out.loss).float() * k
            self.val_n += k

        def on_validation_epoch_end(self) -> None:
            val = self.val_sum / self.val_n
            self.log("val_loss", val)   # ReduceLROnPlateau monitors it
            self.val_losses.append(val.item())

        def configure_optimizers(self) -> dict:
            optimizer, plateau = _optim(self.net, self.train_cfg)
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}}

    return BenchModule


def run_lightning(w: Workload, epochs: int) -> Outcome:
    import lightning.pytorch as pl

    cfg = w.cfg_for(epochs)
    model, loaders, device = _build(w, cfg)
    module = _lightning_module()(w, model, cfg.train)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="32-true" if cfg.train.precision == "fp32" else "bf16-mixed", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
    trainer.fit(module, loaders.train, loaders.val)
    return Outcome(adam_steps(trainer.optimizers[0]), module.val_losses)


def run_ignite(w: Workload, epochs: int) -> Outcome:
    from ignite.engine import Engine, Events

    cfg = w.cfg_for(epochs)
    train = cfg.train
    model, loaders, device = _build(w, cfg)
    optimizer, plateau = _optim(model, train)
    params, forward, clip = list(model.parameters()), w.recipe.forward_batch, CLIP
    move, amp, tensor_loss = device.type != "cpu", _autocast(device, train.precision), \
        w.tensor_loss
    epoch_of = {"ctx": None, "total": None}
    val_losses: list[float] = []

    def step(engine: Engine, batch: Any) -> torch.Tensor:
        if move:
            batch = move_to_device(batch, device, True)
        if amp is None:
            out = forward(model, batch, epoch_of["ctx"])
        else:
            with amp:
                out = forward(model, batch, epoch_of["ctx"])
        loss = out if tensor_loss else out.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss.detach()
        epoch_of["total"] += loss
        return loss

    trainer = Engine(step)

    @trainer.on(Events.EPOCH_STARTED)
    def start(engine: Engine) -> None:
        epoch = engine.core.state.epoch - 1
        loaders.train.sampler.set_epoch(epoch)
        model.train()
        epoch_of.update(ctx=StepContext(device, True, epoch, 0),
                        total=torch.zeros((), device=device))

    @trainer.on(Events.EPOCH_COMPLETED)
    def end(engine: Engine) -> None:
        val_losses.append(validate(w, model, loaders.val, device, train.precision,
                                   engine.core.state.epoch - 1))
        plateau.step(val_losses[-1])

    trainer.run(loaders.train, max_epochs=epochs)
    return Outcome(adam_steps(optimizer), val_losses)


# "hand-again" (the hand loop once more, last in each round) shows the noise floor: its ratio to
# "hand" would be 1.000 on a quiet machine, and its extra calls are 0 by construction
RUNNERS = {"hand": run_hand, "engine": run_engine, "engine+callbacks": run_engine_callbacks,
           "engine+callbacks+plot": run_engine_callbacks_plot,
           "lightning": run_lightning, "ignite": run_ignite, "hand-again": run_hand}
PEERS = {"lightning": "lightning.pytorch", "ignite": "ignite.engine"}    # runner -> module it needs


def quiet_peers() -> None:
    """The peers' INFO lines ("GPU available", "Engine run starting") and hints stay out."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "ignite"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
def timed(fn, *args) -> tuple[float, float, Outcome]:
    """Wall-clock and CPU seconds (this process) of `fn(*args)`: on a loaded machine the CPU
    time varies less than the wall-clock time."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, out


def calls_of(fn, *args) -> tuple[int, Outcome, pstats.Stats]:
    """Every Python and C function call `fn` makes (cProfile counts both)."""
    gc.collect()
    prof = cProfile.Profile()
    prof.enable()
    try:
        out = fn(*args)
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    return stats.total_calls, out, stats


def check(workload, name: str, out: Outcome, reference: Outcome | None, start_loss: float):
    """Same number of optimizer steps as the hand-written loop; the validation loss fell; on a
    deterministic workload, the same final validation loss as the hand-written loop."""
    if reference is not None and out.steps != reference.steps:
        raise BenchFailure(f"{workload.name}/{name}: {out.steps} optimizer steps, the "
                           f"hand-written loop {reference.steps}")
    if not out.val_losses or not out.val_losses[-1] < start_loss:
        raise BenchFailure(f"{workload.name}/{name}: the validation loss did not fall "
                           f"(untrained {start_loss:.4g}, after training {out.val_losses})")
    if reference is not None and workload.deterministic:
        a, b = out.val_losses[-1], reference.val_losses[-1]
        if abs(a - b) > 1e-4 * max(1.0, abs(b)):
            raise BenchFailure(f"{workload.name}/{name}: final validation loss {a:.6g}, the "
                               f"hand-written loop {b:.6g}: not the same work (data order?)")


def call_counts(workload, runners: dict, explain: str | None) -> dict:
    """Per runner: the calls per optimizer step beyond the hand-written loop."""
    per_step, profiles = {}, {}
    for name, fn in runners.items():
        one, out1, stats1 = calls_of(fn, workload, 1)
        three, out3, stats3 = calls_of(fn, workload, 3)
        per_step[name] = (three - one) / (out3.steps - out1.steps)
        profiles[name] = (stats1, stats3, out3.steps - out1.steps)
    hand = per_step["hand"]
    if explain in profiles:
        print_explanation(workload.name, explain, profiles[explain], profiles["hand"])
    return {name: round(v - hand, 1) for name, v in per_step.items()} | {"hand_total": hand}


def print_explanation(workload: str, name: str, runner, hand) -> None:
    """The functions whose calls per step differ most between `name` and the hand loop."""
    def per_step(stats1, stats3, steps):
        out = {}
        for key in set(stats1.stats) | set(stats3.stats):
            n3 = stats3.stats.get(key, (0, 0))[1]
            n1 = stats1.stats.get(key, (0, 0))[1]
            out[key] = (n3 - n1) / steps
        return out

    mine, base = per_step(*runner), per_step(*hand)
    diff = {k: mine.get(k, 0.0) - base.get(k, 0.0) for k in set(mine) | set(base)}
    print(f"\n{workload}/{name}: calls per step beyond the hand-written loop, by function")
    top = int(os.environ.get("EXPLAIN_TOP", "25"))   # how many functions to list
    for (path, line, func), d in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]:
        if abs(d) >= 0.05:
            print(f"  {d:+7.2f}  {func}  ({Path(path).name}:{line})")


def run_workload(workload, names: list[str], rounds: int, explain: str | None) -> dict:
    runners = {n: RUNNERS[n] for n in names}
    start_loss = initial_val_loss(workload)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    notes, outcomes = {}, {}
    for r in range(rounds):
        for name, fn in runners.items():
            seconds, cpu_seconds, out = timed(fn, workload, workload.epochs)
            check(workload, name, out, outcomes.get("hand"), start_loss)
            outcomes[name] = out
            if r > 0:   # the first round warms caches and imports: discarded
                times[name].append(seconds / out.steps * 1e6)
                cpu[name].append(cpu_seconds / out.steps * 1e6)
        print(f"  round {r + 1}/{rounds}: " + "  ".join(
            f"{n} {times[n][-1]:.0f}" if times[n] else f"{n} (warm-up)" for n in names),
            flush=True)
    calls = call_counts(workload, runners, explain)
    steps = outcomes["hand"].steps
    rows = {}
    for name in names:
        ratios = [t / h for t, h in zip(times[name], times["hand"], strict=True)]
        cpu_ratios = [t / h for t, h in zip(cpu[name], cpu["hand"], strict=True)]
        rows[name] = {
            "us_per_step": round(statistics.median(times[name]), 1),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "cpu_us_per_step": round(statistics.median(cpu[name]), 1),
            "cpu_ratio": round(statistics.median(cpu_ratios), 3),
            "extra_calls_per_step": calls[name], "steps": outcomes[name].steps,
            "final_val_loss": outcomes[name].val_losses[-1], "note": notes.get(name, "")}
    return {"steps": steps, "epochs": workload.epochs, "batch_size": workload.batch_size,
            "untrained_val_loss": start_loss, "hand_calls_per_step": round(calls["hand_total"], 1),
            "runners": rows}


def judge(report: dict) -> None:
    """Mark each target met or not, by the wall-clock ratio and by the CPU-time ratio (on a
    loaded machine the wall clock also measures the other processes)."""
    for wname, w in report["workloads"].items():
        for name, row in w["runners"].items():
            target = TARGETS.get((wname, name))
            if target is None or "skipped" in row:
                continue
            max_calls, max_ratio = target
            calls_ok = max_calls is None or row["extra_calls_per_step"] <= max_calls
            row["target"] = (f"<= {max_calls} calls, " if max_calls else "") + f"<= {max_ratio}x"
            row["target_met_wall"] = calls_ok and row["ratio"] <= max_ratio
            row["target_met_cpu"] = calls_ok and row["cpu_ratio"] <= max_ratio


def machine() -> dict:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for peer, module in PEERS.items():
        with contextlib.suppress(Exception):
            info[peer] = __import__(module).__version__
    return info


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"{m['threads']} torch thread(s), load average {m['load_average_at_start']} at "
             f"the start, {m.get('load_average_at_end')} at the end"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + ".",
             f"Command: `{report['command']}` ({report['rounds']} rounds, first discarded).", "",
             "| workload | runner | us/step | ratio to hand (min-max) | CPU us/step | CPU ratio "
             "| extra calls/step | target | met (wall/CPU) |",
             "|---|---|---:|---|---:|---:|---:|---|---|"]
    for wname, w in report["workloads"].items():
        for name, row in w["runners"].items():
            if "skipped" in row:
                lines.append(f"| {wname} | {name} | - | - | - | - | - | | {row['skipped']} |")
                continue
            calls = "0 (reference)" if name == "hand" else f"{row['extra_calls_per_step']:+g}"
            met = "" if "target" not in row else "/".join(
                "yes" if row[k] else "**no**" for k in ("target_met_wall", "target_met_cpu"))
            lines.append(f"| {wname} | {name} | {row['us_per_step']:.0f} | {row['ratio']:.3f} "
                         f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | "
                         f"{row['cpu_us_per_step']:.0f} | {row['cpu_ratio']:.3f} | {calls} | "
                         f"{row.get('target', '')} | {met} |")
    lines.append("")
    for wname, w in report["workloads"].items():
        lines.append(f"- {wname}: {w['steps']} optimizer steps per fit ({w['epochs']} epochs, "
                     f"batch {w['batch_size']}); the hand-written loop makes "
                     f"{w['hand_calls_per_step']} calls per step.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=13, help="rounds, the first discarded")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every workload")
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 60 s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave)")
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    parser.add_argument("--precision", default="fp32", help='"fp32" or "bf16"')
    parser.add_argument("--explain", default=None, help="print where RUNNER's extra calls go")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON and Markdown")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is discarded)")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in RUNNERS if n not in PEERS or _importable(PEERS[n])]
    quiet_peers()   # after the imports: Lightning sets its loggers' levels when imported
    skipped = {n: f"skipped: {PEERS[n]} not installed" for n in RUNNERS if n not in names}
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        workloads = make_workloads(Path(work), args.device, args.precision, args.quick)
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in workloads]
        if unknown:
            parser.error(f"unknown workload(s) {unknown}; known: {sorted(workloads)}")
        report = {"command": " ".join(["python benchmarks/overhead.py", *(argv or sys.argv[1:])]),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "rounds": 2 if args.quick else args.rounds, "machine": machine(),
                  "workloads": {}}
        for wname in wanted:
            w = workloads[wname]
            if args.epochs:
                w = w.with_epochs(args.epochs)
            print(f"{wname}: {w.description}", flush=True)
            result = run_workload(w, names, report["rounds"], args.explain)
            result["runners"].update({n: {"skipped": why} for n, why in skipped.items()})
            report["workloads"][wname] = result
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    judge(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "overhead-quick" if args.quick else "overhead"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    (out / f"{stem}.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    return 0


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailure as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
