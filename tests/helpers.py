"""Running `python -m engine` in a subprocess from a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def engine(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
           recipes: Path | None = ROOT / "recipes.toml") -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in `cwd` with the project importable; output captured."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    full_env.pop("ENGINE_DEBUG", None)
    extra = ["--recipes", str(recipes)] if recipes is not None else []
    return subprocess.run([sys.executable, "-m", "engine", *args, *extra], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_dirs(cwd: Path, recipe: str) -> list[Path]:
    root = cwd / "artifacts" / "models" / recipe / "runs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
