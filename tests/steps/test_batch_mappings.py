"""move_to_device and Mappings that are not plain dicts (issue 14): a defaultdict keeps its
type and factory, a Mapping that cannot be rebuilt from a dict comes back as a plain dict."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Mapping

import torch

from steps import move_to_device

CPU = torch.device("cpu")


class Frozen(Mapping):
    """A read-only Mapping whose constructor takes no dict."""

    def __init__(self, *, x: torch.Tensor, y: torch.Tensor) -> None:
        self._items = {"x": x, "y": y}

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


def test_defaultdict_keeps_its_type_and_factory():
    """A defaultdict batch is moved as a defaultdict with the same default_factory."""
    batch = defaultdict(list, {"x": torch.ones(2), "y": torch.zeros(2)})
    moved = move_to_device(batch, CPU)
    assert type(moved) is defaultdict and moved.default_factory is list
    assert set(moved) == {"x", "y"} and torch.equal(moved["x"], batch["x"])
    assert moved is not batch


def test_ordered_dict_and_dict_subclass_keep_their_type():
    """Mappings that rebuild from a dict keep their type, the keys in order."""
    class Batch(dict):
        pass

    for batch in (OrderedDict(b=torch.ones(1), a=torch.ones(2)),
                  Batch(b=torch.ones(1), a=torch.ones(2))):
        moved = move_to_device(batch, CPU)
        assert type(moved) is type(batch) and list(moved) == ["b", "a"]


def test_mapping_without_dict_constructor_becomes_a_dict():
    """A custom Mapping that cannot be built from a dict comes back as a plain dict of the
    moved values, nested structure kept."""
    batch = Frozen(x=torch.ones(3), y=[torch.zeros(1), {"z": torch.ones(1)}])
    moved = move_to_device(batch, CPU)
    assert type(moved) is dict and list(moved) == ["x", "y"]
    assert torch.equal(moved["x"], torch.ones(3)) and torch.equal(moved["y"][1]["z"],
                                                                  torch.ones(1))
