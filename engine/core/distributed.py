"""torchrun / DistributedDataParallel: set up from torchrun's environment, tear down on exit.

Launched by `torchrun --nproc_per_node=N -m engine run NAME`, every rank runs the same `fit`;
this module holds the few places that differ: the process group, the model wrapper, the
sampler per loader, the reductions that keep every rank's decisions identical.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import math
import os
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from engine.core.errors import UserError


@attrs.frozen
class World:
    """The processes of a torchrun job as this rank sees them (one process: inactive)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False    # this fit initialised the process group and tears it down
    # whether this is one of several processes: a field, not a property, since the loop asks
    # at every read of its figures and every validation
    active: bool = attrs.field(init=False)

    @active.default
    def _several(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files, logs and the progress bar (rank 0)."""
        return self.rank == 0


def from_env() -> World:
    """Rank and world size from torchrun's environment (WORLD_SIZE > 1), else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> World:
    """Start the process group (NCCL on CUDA, gloo on CPU) unless one is running already."""
    if not world.active or dist.is_initialized():
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = collective_timeout()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torch.distributed.nn.functional takes group.WORLD as its functions' default argument
    # when first imported (torch._dynamo imports it, at the first optimizer). Imported after
    # the group starts, it holds the group: destroy_process_group then leaves gloo's threads
    # running to the interpreter's exit, where they were seen to abort a rank (SIGABRT,
    # "terminate called without an active exception"). Imported first, it holds None.
    importlib.import_module("torch.distributed.nn.functional")
    # a rank that dies leaves the others in a collective: time out rather than hang for ever
    dist.init_process_group(backend, timeout=timeout)
    return attrs.evolve(world, owns_group=True)


def collective_timeout() -> datetime.timedelta:
    """`ENGINE_DIST_TIMEOUT` (seconds, default 300): how long a collective waits for a rank."""
    text = os.environ.get("ENGINE_DIST_TIMEOUT", "300")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError("ENGINE_DIST_TIMEOUT is not a number of seconds",
                        where=f"the environment variable ENGINE_DIST_TIMEOUT={text}",
                        expected="a number of seconds > 0 (default 300)", found=repr(text),
                        hint="e.g. ENGINE_DIST_TIMEOUT=600, or unset it")
    return datetime.timedelta(seconds=seconds)


def teardown(world: World) -> None:
    """Destroy the process group this run made (if any)."""
    if world.owns_group and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The model DistributedDataParallel-wrapped under torchrun; itself otherwise."""
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel  # deferred: start-up time
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def rebuild_loader(loader: Any, *, sampler: Any = None, pin_memory: bool | None = None,
                   which: str = "train") -> Any:
    """The same dataset, batching and collate function with another sampler (sharding) and/or
    pinning. Pinning alone keeps how the loader draws its batches: its sampler, its
    batch_sampler, or none for an IterableDataset."""
    if not isinstance(loader, DataLoader):
        return loader
    iterable = isinstance(loader.dataset, IterableDataset)
    kwargs = dict(collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                  pin_memory=loader.pin_memory if pin_memory is None else pin_memory,
                  worker_init_fn=loader.worker_init_fn, timeout=loader.timeout,
                  multiprocessing_context=loader.multiprocessing_context,
                  persistent_workers=loader.persistent_workers, generator=loader.generator,
                  in_order=getattr(loader, "in_order", True))
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if sampler is None and (iterable or loader.batch_size is None):
        if loader.batch_sampler is not None and not iterable:
            # a custom batch_sampler decides the batches: keep it (batch_size, drop_last and
            # sampler must then be left unset)
            return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **kwargs)
        # an IterableDataset (no sampler at all) or batch_size=None (no automatic batching)
        return DataLoader(loader.dataset, batch_size=loader.batch_size,
                          drop_last=loader.drop_last,
                          sampler=None if iterable else loader.sampler, **kwargs)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last,
                      sampler=loader.sampler if sampler is None else sampler, **kwargs)


def shard(loader: Any, world: World, seed: int, which: str) -> Any:
    """`loader` over its rank's share of the data.

    Training: a DistributedSampler, which pads the data so that every rank takes the same
    number of steps (DDP's collectives must match). Validation: rank r reads samples r, r + N,
    ... with no padding, so the means summed over ranks count every sample exactly once (the
    loop validates the unwrapped model: no collective inside, uneven shares are fine).
    """
    if not world.active or not isinstance(loader, DataLoader):
        return loader
    iterable = isinstance(loader.dataset, IterableDataset)
    if iterable or loader.batch_size is None:
        # the engine can only shard what a sampler draws from: indices of a map-style dataset
        raise UserError(f"the {which} loader cannot be sharded across ranks",
                        where="build_loaders", expected="a DataLoader over a map-style dataset "
                        "built with batch_size= (the engine gives it a DistributedSampler)",
                        found="a DataLoader over an IterableDataset" if iterable else
                        "a DataLoader with a custom batch_sampler (or batch_size=None)",
                        hint="shard the data by rank inside the dataset or the batch sampler "
                        "and build the loaders for one process, or use a map-style dataset")
    if which == "val":
        n = len(loader.dataset)
        if n < world.world_size:
            raise UserError("the validation set is smaller than the number of processes",
                            where="build_loaders", expected=f"at least {world.world_size} "
                            "validation samples (one per rank)", found=f"{n} samples")
        return rebuild_loader(loader, sampler=range(world.rank, n, world.world_size),
                              which=which)
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(loader.dataset, num_replicas=world.world_size, rank=world.rank,
                                 shuffle=shuffle, seed=seed, drop_last=loader.drop_last)
    return rebuild_loader(loader, sampler=sampler, which=which)


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a DistributedSampler the epoch, so each epoch draws a new order."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def from_main(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank (a picklable object; one broadcast)."""
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish_together(world: World) -> None:
    """After a run that ended well on every rank: wait for the others before the process
    group goes, so that no rank tears it down while another still has a collective in it.
    (The abort at exit once blamed on that, "terminate called without an active exception",
    came from a group that outlived destroy_process_group: see `init`.) Not on the way out of
    an error: a dead rank would never arrive."""
    if world.active and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sum a few figures over ranks (one collective); one process: the figures as they are."""
    if not world.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when it is True on one (stop signals, non-finite losses)."""
    if not world.active:
        return flag
    return all_sum([1.0 if flag else 0.0], world, device)[0] > 0


def no_sync(model: torch.nn.Module, accumulating: bool) -> Any:
    """DDP's no_sync on the accumulating micro-batches: gradients are reduced only once."""
    if accumulating and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def check_resume_world(checkpoint: dict, world_size: int, where: str) -> None:
    """A mid-epoch checkpoint resumes only with the number of processes that wrote it.

    Its epoch's data order and the batches already trained are those of that many shards (the
    DistributedSampler splits the epoch by the world size), so another number would train some
    samples twice and others never. An epoch-end checkpoint (loop.batch == 0) resumes with any
    number. A checkpoint that does not say (older files) is taken as it is.
    """
    saved = checkpoint.get("world_size")
    loop = checkpoint.get("loop") or {}
    mid_epoch = isinstance(loop, dict) and int(loop.get("batch") or 0) > 0
    if not mid_epoch or not isinstance(saved, int) or isinstance(saved, bool):
        return
    if saved != world_size:
        def processes(n: int) -> str:
            return f"{n} process" + ("es" if n != 1 else "")
        raise UserError(
            "the checkpoint was written mid-epoch by another number of processes",
            where=where, expected=f"a resume with {processes(saved)} (as the checkpoint was "
            "written), or from an epoch-end checkpoint",
            found=f"a checkpoint written by {processes(saved)} at epoch "
            f"{int(loop.get('epoch', 0)) + 1}, batch {int(loop.get('batch', 0))}, resumed with "
            f"{processes(world_size)}",
            hint=f"resume with torchrun --nproc_per_node={saved}" if saved > 1 else
            "resume in one process (without torchrun)")
