"""What every part of the dataset package shares: its errors, the splits a source yields, and
the one stratified split (MNIST's offline subset, imports), which lives in ``node.shared``
because nodes split their own data with it too."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from node.shared.errors import DataError, FedavgError
from node.shared.splits import stratified_split

__all__ = [
    "DatasetError",
    "DatasetExists",
    "OutsideImportRoots",
    "Splits",
    "UnknownDataset",
    "stratified_split",
]


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
