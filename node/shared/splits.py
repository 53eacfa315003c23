"""The one stratified train/test split: the server's offline subset and imports, and each
node's local test split of its own data, cut the same way."""

from __future__ import annotations

import math

import torch


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
