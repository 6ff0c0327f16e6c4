"""CUDA RNG states under torchrun: rank r resumes with its own device's stream, never with a
device state from rank 0's process that no rank trained with (engine.core.rng).

No GPU here: torch.cuda's RNG functions and the process group's rank are replaced by a small
per-process model of them (devices holding a state each); everything else is the engine's."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from engine.core import rng


class FakeCuda:
    """One process's view of its CUDA devices' generators."""

    def __init__(self, n_devices: int, current: int) -> None:
        self.states = [torch.tensor([100 + d], dtype=torch.uint8) for d in range(n_devices)]
        self.current = current

    def install(self, monkeypatch, rank: int | None) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device=None: self.states[
            self.current if device is None else int(device)].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])

        def set_one(state, device=None):
            self.states[self.current if device is None else int(device)] = state.clone()

        def set_all(states):
            for d, s in enumerate(states):
                self.states[d] = s.clone()

        monkeypatch.setattr(cuda, "set_rng_state", set_one)
        monkeypatch.setattr(cuda, "set_rng_state_all", set_all)
        monkeypatch.setattr(dist, "is_initialized", lambda: rank is not None)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)


def test_rank_1_restores_the_stream_of_its_own_device(monkeypatch):
    """Two ranks, each driving device = rank, both at stream state 7 on their own device (same
    seed, same consumption); rank 0 saves; rank 1, after its device drifted, restores: its
    device 1 holds 7 again, and the device it does not use is left alone."""
    rank0, rank1 = FakeCuda(2, current=0), FakeCuda(2, current=1)
    rank0.states[0] = torch.tensor([7], dtype=torch.uint8)   # device 1 untouched in rank 0
    rank0.install(monkeypatch, rank=0)
    saved = rng.rng_state()
    rank1.states[1] = torch.tensor([99], dtype=torch.uint8)   # where rank 1 is at resume
    rank1.install(monkeypatch, rank=1)
    rng.set_rng_state(saved)
    assert rank1.states[1].item() == 7, "rank 1 got a device state no rank trained with"
    assert rank1.states[0].item() == 100


def test_one_process_saves_and_restores_every_device(monkeypatch):
    """One process (no process group) keeps every visible device's state, as before."""
    proc = FakeCuda(3, current=0)
    proc.states = [torch.tensor([v], dtype=torch.uint8) for v in (1, 2, 3)]
    proc.install(monkeypatch, rank=None)
    saved = rng.rng_state()
    proc.states = [torch.tensor([0], dtype=torch.uint8) for _ in range(3)]
    rng.set_rng_state(saved)
    assert [s.item() for s in proc.states] == [1, 2, 3]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_one_process_checkpoint_resumed_by_ranks_restores_its_training_device(
        monkeypatch, rank):
    """An epoch-end checkpoint of one process trained on device 2, resumed by two ranks: each
    rank's own device gets device 2's stream."""
    proc = FakeCuda(3, current=2)
    proc.states = [torch.tensor([v], dtype=torch.uint8) for v in (1, 2, 3)]
    proc.install(monkeypatch, rank=None)
    saved = rng.rng_state()
    ranked = FakeCuda(3, current=rank)
    ranked.install(monkeypatch, rank=rank)
    rng.set_rng_state(saved)
    assert ranked.states[rank].item() == 3
