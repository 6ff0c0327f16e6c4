"""Start-up: `python -m engine run autoencoder --set train.epochs=1` against a hand-written
script doing the same work, both as whole processes, interleaved.

    python benchmarks/startup.py              # 5 rounds (+1 warm-up, discarded)
    python benchmarks/startup.py --rounds 9

The hand-written script imports torch, builds the autoencoder's zoo and model the recipe's way
(the same code, copied so it imports nothing of the engine), trains one epoch with Adam,
clipping and ReduceLROnPlateau, validates, and saves the model with torch.save. Each process
runs from a fresh temporary folder with OMP_NUM_THREADS=1. The table has the median wall time
of each and the median of the per-round differences; `python -X importtime` then shows what
the engine process imports that the hand one does not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HAND = r'''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
factors = torch.randn(2048, 6, generator=g)
mix = torch.randn(6, 64, generator=g) / 6 ** 0.5
bend = torch.randn(64, generator=g)
x = torch.tanh(factors @ mix + 0.5 * bend) + 0.3 * (factors @ mix)
x = x + 0.05 * torch.randn(x.shape, generator=g)
x = (x - x.mean(0)) / x.std(0)
n_val = int(len(x) * 0.2)
train = DataLoader(TensorDataset(x[n_val:]), batch_size=64, shuffle=True)
val = DataLoader(TensorDataset(x[:n_val]), batch_size=64)
model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Dropout(0.0), nn.Linear(128, 8),
                      nn.Linear(8, 128), nn.GELU(), nn.Dropout(0.0), nn.Linear(128, 64))
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
for (xb,) in train:
    loss = nn.functional.mse_loss(model(xb), xb)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
model.eval()
with torch.no_grad():
    val_loss = sum(nn.functional.mse_loss(model(xb), xb, reduction="sum").item()
                   for (xb,) in val) / (n_val * 64)
plateau.step(val_loss)
torch.save(model.state_dict(), "model.pt")
print(f"val_loss {val_loss:.4f}")
'''


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_engine(folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "run", "autoencoder", "--recipes",
                    str(ROOT / "recipes.toml"), "--set", "train.epochs=1"], cwd=folder,
                   env=_env(), check=True, capture_output=True)
    return time.perf_counter() - start


def run_hand(folder: Path) -> float:
    script = folder / "hand.py"
    script.write_text(HAND)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script)], cwd=folder, env=_env(), check=True,
                   capture_output=True)
    return time.perf_counter() - start


def import_times(folder: Path, argv: list[str]) -> dict[str, int]:
    """Every module a process imports and its own microseconds (-X importtime's self time,
    without the modules it imports in turn)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=folder, env=_env(),
                          capture_output=True, text=True, check=True)
    out = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line.split("|")   # "import time: <own> | <cumulative> | <name>"
        out[name.strip()] = int(own.split(":")[-1])
    return out


def beyond(engine: dict[str, int], hand: dict[str, int]) -> list[tuple[int, str]]:
    """The modules only the engine process imports, their own times summed by package (its
    first two name parts: `numpy.random`, `engine.io`), largest first. By own time, so that
    torch, which both import, counts for neither, whichever engine module imports it first."""
    groups: dict[str, int] = {}
    for name, us in engine.items():
        if name not in hand:
            group = ".".join(name.split(".")[:2])
            groups[group] = groups.get(group, 0) + us
    return sorted(((us, name) for name, us in groups.items()), reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    engine_s, hand_s = [], []
    for r in range(args.rounds + 1):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            e, h = run_engine(Path(a)), run_hand(Path(b))
        if r:   # the first round warms the file cache: discarded
            engine_s.append(e)
            hand_s.append(h)
        print(f"round {r}: engine {e:.2f} s, hand {h:.2f} s" + ("" if r else " (warm-up)"),
              flush=True)
    diffs = [e - h for e, h in zip(engine_s, hand_s)]
    print(f"\nload average at the end: {os.getloadavg()}")
    print("| process | median wall s | min | max |\n|---|---:|---:|---:|")
    for name, xs in (("engine run", engine_s), ("hand script", hand_s)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
    print(f"| difference (per round) | {statistics.median(diffs):+.2f} | {min(diffs):+.2f} | "
          f"{max(diffs):+.2f} |")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        (Path(b) / "hand.py").write_text(HAND)
        engine = import_times(Path(a), ["-m", "engine", "run", "autoencoder", "--recipes",
                                        str(ROOT / "recipes.toml"), "--set", "train.epochs=1"])
        hand = import_times(Path(b), ["hand.py"])
    extra = beyond(engine, hand)
    print(f"\nimports of the engine process beyond the hand script's: "
          f"{sum(us for us, _ in extra) / 1000:.1f} ms in all (own time, by package):")
    for us, name in extra[:12]:
        print(f"  {us / 1000:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
