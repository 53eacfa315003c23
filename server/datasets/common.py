"""What every part of the dataset package shares: its errors and the splits a source yields."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from node.shared.errors import FedavgError


class DatasetError(FedavgError):
    """A dataset that cannot be prepared or read; the message says which file and how to fix it."""


class UnknownDataset(DatasetError):
    """A dataset id that is malformed, not in the catalogue, or not prepared."""


@dataclass(frozen=True, slots=True)
class Splits:
    """One source's reading of a dataset: ``x`` uint8 [N, C, H, W], ``y`` int64 [N]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    source_detail: str
