"""Under torchrun every rank of ranking_v2 writes its synthetic data cache into a fresh output
directory at the same moment (issue 14): unique temporary files make that race harmless."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_two_ranks_fill_one_data_cache(tmp_path):
    """torchrun, 2 ranks, a fresh output directory: exit 0, one cache file, no temporaries."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path), OMP_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    env.pop("ENGINE_DEBUG", None)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "engine", "run", "ranking_v2", "--recipes", str(ROOT / "recipes.toml"),
         "--set", "data.synthetic_datasets=60", "--set", "train.epochs=1",
         "--set", 'train.device="cpu"', "--output-dir", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot be written" not in proc.stderr
    data = sorted(p.name for p in (out / "data").iterdir())
    assert len(data) == 1 and data[0].startswith("ranking_v2-synthetic-"), data
    assert data[0].endswith(".pt")
    runs = list((out / "models" / "ranking_v2" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()
