"""The random number generators that decide a run, as plain values: captured at fixed points
of the loop (an exact resume replays them) and stored in checkpoints.

CUDA's generators are per device. One process holds every visible device, so its state is all
of them. Under torchrun a rank drives one device, and only rank 0 writes checkpoints: rank 0's
`get_rng_state_all()` holds its own device's state plus the untouched, freshly seeded states of
the devices the other ranks drive, and restoring that list on rank r puts a state no rank ever
had on rank r's device. So a rank stores its current device's state alone, tagged with its rank
and device index, and a restore puts it on the restoring rank's current device. Every rank seeds
the same (`train.seed`) and consumes its generator in step with the others, so rank 0's stream
is the stream each rank had.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch


def rng_state() -> dict:
    """Every RNG that decides a run: Python's, NumPy's (if imported), torch CPU and CUDA."""
    version, keys, gauss = random.getstate()
    # the 625- and 624-word Mersenne Twister states as one int64 tensor each, not lists of
    # ints: a checkpoint pickles a list element by element (1,250 objects a save)
    state = {"python": [version, torch.tensor(keys, dtype=torch.int64), gauss],
             "torch": torch.get_rng_state(),
             "cuda": cuda_state(torch.cuda, _rank()) if torch.cuda.is_available() else [],
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
        set_cuda_state(torch.cuda, state["cuda"], _rank())
    if state.get("numpy") is not None:
        import numpy as np  # deferred: start-up time
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(_ints(keys), dtype=np.uint32), pos, has_gauss,
                             cached))


def _ints(keys) -> list[int]:
    # a tensor (this format) or a list of ints (checkpoints written before it)
    return keys.tolist() if isinstance(keys, torch.Tensor) else [int(k) for k in keys]


def _rank() -> int | None:
    """This process's rank under torchrun, None for one process."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank()
    return None


def cuda_state(cuda: Any, rank: int | None) -> dict:
    """CUDA's RNG state (`cuda` is `torch.cuda`, a parameter so the choice is testable on CPU):
    one process: every device's; a rank (`rank` not None): its current device's only."""
    device = int(cuda.current_device())
    if rank is None:
        return {"rank": None, "device": device, "states": list(cuda.get_rng_state_all())}
    return {"rank": int(rank), "device": device, "states": [cuda.get_rng_state(device)]}


def set_cuda_state(cuda: Any, saved: Any, rank: int | None) -> None:
    """Restore what `cuda_state` saved: one process restores every device it saved; a rank
    restores the one saved stream onto its own current device (whichever rank or process
    saved it: see the module docstring)."""
    if isinstance(saved, (list, tuple)):
        # checkpoints before the rank tag held get_rng_state_all() of the saving process,
        # right for one process only
        if rank is None:
            cuda.set_rng_state_all(list(saved))
        return
    states = saved["states"]
    if rank is None and saved["rank"] is None:
        cuda.set_rng_state_all(states)
        return
    # a rank's own stream, or one process's stream of the device it trained on
    stream = states[0] if saved["rank"] is not None else states[saved["device"]]
    cuda.set_rng_state(stream, int(cuda.current_device()))
