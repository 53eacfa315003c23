"""What every part of the dataset package shares: its errors, the splits a source yields, and
the one stratified split (MNIST's offline subset, imports)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from node.shared.errors import DataError, FedavgError


class DatasetError(FedavgError):
    """A dataset that cannot be prepared or read; the message says which file and how to fix it."""


class UnknownDataset(DatasetError):
    """A dataset id that is malformed, not in the catalogue, or not prepared."""


class OutsideImportRoots(DataError):
    """An import path that is not inside the import roots (``FEDAVG_IMPORT_ROOTS``): 403."""


class DatasetExists(DataError):
    """An import onto an id that is already an imported dataset, without ``force``: 409."""


@dataclass(frozen=True, slots=True)
class Splits:
    """One source's reading of a dataset: ``x`` uint8 [N, C, H, W], ``y`` int64 [N]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    source_detail: str


def stratified_split(
    y: torch.Tensor, num_classes: int, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of ``(train, test)``: per class, a seeded ``floor(n x test_fraction)`` of its
    ``n`` samples go to test, at least one and at most ``n - 1`` when ``n >= 2`` (so such a
    class is in both splits; a class of one sample stays in train). Each split is then
    shuffled, so no class order leaks. The same ``y`` and seed always give the same split.
    """
    gen = torch.Generator().manual_seed(seed)
    train_parts, test_parts = [], []
    for label in range(num_classes):
        idx = (y == label).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n = idx.numel()
        n_test = min(max(math.floor(n * test_fraction), 1), n - 1) if n >= 2 else 0
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train, test = torch.cat(train_parts), torch.cat(test_parts)
    train = train[torch.randperm(train.numel(), generator=gen)]
    test = test[torch.randperm(test.numel(), generator=gen)]
    return train, test
