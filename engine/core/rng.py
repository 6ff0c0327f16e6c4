"""The random number generators that decide a run, as plain values: captured at fixed points
of the loop (an exact resume replays them) and stored in checkpoints."""

from __future__ import annotations

import random
import sys

import torch


def rng_state() -> dict:
    """Every RNG that decides a run: Python's, NumPy's (if imported), torch CPU and CUDA."""
    version, keys, gauss = random.getstate()
    # the 625- and 624-word Mersenne Twister states as one int64 tensor each, not lists of
    # ints: a checkpoint pickles a list element by element (1,250 objects a save)
    state = {"python": [version, torch.tensor(keys, dtype=torch.int64), gauss],
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "numpy": None}
    np = sys.modules.get("numpy")
    if np is not None:
        name, np_keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, torch.from_numpy(np_keys.astype("int64")), int(pos),
                          int(has_gauss), float(cached)]
    return state


def set_rng_state(state: dict) -> None:
    """Restore every RNG from `rng_state()`'s value."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(_ints(keys)), gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        import numpy as np  # deferred: start-up time
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(_ints(keys), dtype=np.uint32), pos, has_gauss,
                             cached))


def _ints(keys) -> list[int]:
    # a tensor (this format) or a list of ints (checkpoints written before it)
    return keys.tolist() if isinstance(keys, torch.Tensor) else [int(k) for k in keys]
