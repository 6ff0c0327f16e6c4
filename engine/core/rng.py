"""The random number generators that decide a run, as plain values: captured at fixed points
of the loop (an exact resume replays them) and stored in checkpoints."""

from __future__ import annotations

import random
import sys

import torch


def rng_state() -> dict:
    """Every RNG that decides a run: Python's, NumPy's (if imported), torch CPU and CUDA."""
    version, keys, gauss = random.getstate()
    state = {"python": [version, list(keys), gauss], "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "numpy": None}
    np = sys.modules.get("numpy")
    if np is not None:
        name, np_keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, [int(k) for k in np_keys], int(pos), int(has_gauss),
                          float(cached)]
    return state


def set_rng_state(state: dict) -> None:
    """Restore every RNG from `rng_state()`'s value."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        import numpy as np
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
