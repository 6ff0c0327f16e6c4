"""Batches as nested structures: move them to a device, count their samples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import attrs
import torch


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """`batch` with every tensor inside dicts, lists, tuples and attrs/dataclass records on
    `device` (a copy of the containers; tensors already there are returned as they are). A
    Mapping that cannot be rebuilt from a dict comes back as a plain dict."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return _rebuild_mapping(
            batch, {k: move_to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # NamedTuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    if attrs.has(type(batch)):
        return attrs.evolve(batch, **{
            f.name: move_to_device(getattr(batch, f.name), device, non_blocking)
            for f in attrs.fields(type(batch)) if f.init})
    if hasattr(batch, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.replace(batch, **{
            f.name: move_to_device(getattr(batch, f.name), device, non_blocking)
            for f in dataclasses.fields(batch) if f.init})
    return batch


def _rebuild_mapping(batch: Mapping, moved: dict) -> Mapping:
    """`moved` as the batch's own mapping type where it can be rebuilt from a dict (dict,
    OrderedDict, a defaultdict with its factory, most dict subclasses), else as a plain dict:
    forward_batch reads it by key either way."""
    kind = type(batch)
    if kind is dict:
        return moved
    if isinstance(batch, defaultdict):
        return kind(batch.default_factory, moved)
    try:
        rebuilt = kind(moved)
    except Exception:   # a constructor that takes no dict: a custom Mapping
        return moved
    return rebuilt if isinstance(rebuilt, Mapping) and len(rebuilt) == len(moved) else moved


def iter_tensors(batch: Any, path: str = "batch"):
    """Yield (path, tensor) for every tensor in a nested batch, e.g. ("batch['x']", t)."""
    if isinstance(batch, torch.Tensor):
        yield path, batch
    elif isinstance(batch, Mapping):
        for k, v in batch.items():
            yield from iter_tensors(v, f"{path}[{k!r}]")
    elif isinstance(batch, (list, tuple)):
        for i, v in enumerate(batch):
            yield from iter_tensors(v, f"{path}[{i}]")
    elif attrs.has(type(batch)):
        for f in attrs.fields(type(batch)):
            yield from iter_tensors(getattr(batch, f.name), f"{path}.{f.name}")
    elif hasattr(batch, "__dataclass_fields__"):
        for name in batch.__dataclass_fields__:
            yield from iter_tensors(getattr(batch, name), f"{path}.{name}")


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor (1 if none)."""
    for _, tensor in iter_tensors(batch):
        return int(tensor.shape[0]) if tensor.dim() > 0 else 1
    return 1
