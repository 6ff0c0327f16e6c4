"""Splits of the datasets into train, val and test; never of a dataset's models.

    train   the datasets the model learns from (and popularity is counted on)
    val     chooses the best epoch, drives the schedule and early stopping
    test    held out from all of that; evaluated once, at the end, with the best weights

Without `data.folds`: a permutation of the datasets seeded by `data.split_seed`; its first
`round(test_fraction * N)` datasets are test, the next `round(val_fraction * rest)` val, the
others train. With `data.folds = K`: the same permutation cut into K folds whose sizes differ by
at most one (`torch.tensor_split`); test is fold `data.fold`, val the first
`round(val_fraction * rest)` of the other folds in permutation order, train the others. So the
K test sets of `fold = 0..K-1` are disjoint and cover every dataset, and nothing here depends
on `train.seed`: seed replicates share their split.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from engine import UserError, raise_all


@attrs.frozen(eq=False)
class Split:
    """Dataset indices (rows of the data file), each part sorted."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    def as_lists(self) -> dict[str, list[int]]:
        """`{"train": [...], "val": [...], "test": [...]}`, what metrics.json's `split` holds."""
        return {name: getattr(self, name).tolist() for name in ("train", "val", "test")}


def _rounded(n: int, fraction: float) -> int:
    # half up (Python's round sends 0.5 to 0, which would empty a part of 1 dataset's worth)
    return int(n * fraction + 0.5)


def _empty(part: str, key: str, value: float, detail: str, source: str) -> UserError:
    return UserError(f"data.{key} leaves the {part} part empty", where=f"data.{key} = {value}",
                     expected=f"a {part} part of at least one dataset",
                     found=f"{detail}; data: {source}",
                     hint="use a larger data file or change the fraction")


def _fold_errors(n: int, data: Any, source: str) -> list[UserError]:
    if data.folds is None or data.folds <= n:
        return []
    return [UserError("more folds than datasets", where=f"data.folds = {data.folds}",
                      expected=f"at most {n} folds (one dataset per fold at least)",
                      found=f"{n} datasets in {source}", hint=f"set data.folds to 2..{n}")]


def split_datasets(n: int, data: Any, source: str = "the data file") -> Split:
    """The split of `n` datasets by the `[data]` settings; every part non-empty, or a
    UserError naming the key (`source` names the data in the message)."""
    raise_all(_fold_errors(n, data, source))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(data.split_seed))
    errors = []
    if data.folds is None:
        n_test = _rounded(n, data.test_fraction)
        test, rest = order[:n_test], order[n_test:]
        if len(test) == 0:
            errors.append(_empty("test", "test_fraction", data.test_fraction,
                                 f"round({data.test_fraction} * {n} datasets) = 0", source))
        elif len(rest) == 0:
            errors.append(_empty("train", "test_fraction", data.test_fraction,
                                 f"all {n} datasets are test", source))
    else:
        folds = torch.tensor_split(order, data.folds)
        test = folds[data.fold]
        rest = torch.cat([f for i, f in enumerate(folds) if i != data.fold])
    n_val = _rounded(len(rest), data.val_fraction)
    val, train = rest[:n_val], rest[n_val:]
    if len(rest) and not len(val):
        errors.append(_empty("val", "val_fraction", data.val_fraction,
                             f"round({data.val_fraction} * {len(rest)} datasets) = 0", source))
    elif len(rest) and not len(train):
        errors.append(_empty("train", "val_fraction", data.val_fraction,
                             f"all {len(rest)} datasets left after test are val", source))
    raise_all(errors)
    return Split(train=train.sort().values, val=val.sort().values, test=test.sort().values)
