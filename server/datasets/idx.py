"""The IDX reader that MNIST, Fashion-MNIST, KMNIST and EMNIST share (plain or .gz files).

IDX is LeCun's format: magic 0x0000080N (unsigned bytes, N dims), N big-endian uint32 dims,
then the bytes. Each catalogue entry names its four files and the folders they may lie in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import structlog
import torch

from node.shared.errors import DataError
from node.shared.idx import MAX_IDX_BYTES, read_idx
from server.datasets.catalog import CatalogEntry
from server.datasets.common import DatasetError, Splits
from server.datasets.progress import Progress

log = structlog.get_logger(__name__)

SOURCE: Final = "idx-files"


def read_idx_folders(entry: CatalogEntry, folders: list[Path], progress: Progress) -> Splits | None:
    """Parse the first folder holding all four files; a malformed one is an error, not a skip."""
    for folder in folders:
        paths = [idx_file(folder, name) for name in entry.files]
        present = [p for p in paths if p is not None]
        if len(present) < len(entry.files):
            if present:
                missing = [n for n, p in zip(entry.files, paths, strict=True) if p is None]
                log.warning(
                    "dataset_files_incomplete",
                    dataset=entry.dataset_id,
                    folder=str(folder),
                    missing=missing,
                )
            continue
        return _read_set(entry, folder, present, progress)
    return None


def idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_set(entry: CatalogEntry, folder: Path, paths: list[Path], progress: Progress) -> Splits:
    parsed = []
    progress("read", 0, len(paths))
    for done, path in enumerate(paths, 1):
        parsed.append(_read_idx(path, ndim=3 if done % 2 else 1))  # images, labels, images, ...
        progress("read", done, len(paths))
    train_x, train_y = _pair(entry, paths[0], parsed[0], paths[1], parsed[1])
    test_x, test_y = _pair(entry, paths[2], parsed[2], paths[3], parsed[3])
    names = ", ".join(p.name for p in paths)
    detail = f"{entry.title} IDX files in {folder}: {names}"
    return Splits(train_x, train_y, test_x, test_y, SOURCE, detail)


def _pair(
    entry: CatalogEntry,
    images_path: Path,
    images: tuple[tuple[int, ...], bytes],
    labels_path: Path,
    labels: tuple[tuple[int, ...], bytes],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, C, H, W] and labels [N] of one split, each checked against the entry."""
    dims, pixels = images
    (count,), label_bytes = labels
    height, width = entry.input_shape[1:]
    if len(dims) != 3 or dims[1:] != (height, width):
        size = "x".join(map(str, dims[1:]))
        raise DatasetError(f"{images_path}: images are {size}, {entry.title} is {height}x{width}")
    if count != dims[0]:
        raise DatasetError(f"{labels_path}: {count} labels for {dims[0]} images in {images_path}")
    if count and max(label_bytes) >= entry.num_classes:
        raise DatasetError(
            f"{labels_path}: labels must lie in 0..{entry.num_classes - 1}, "
            f"found {max(label_bytes)}"
        )
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).reshape(dims)
    if entry.transposed:  # EMNIST stores each image column by column: turn it upright
        x = x.transpose(1, 2).contiguous()
    y = torch.frombuffer(bytearray(label_bytes), dtype=torch.uint8).to(torch.int64)
    return x.reshape(count, *entry.input_shape), y


def _read_idx(path: Path, *, ndim: int) -> tuple[tuple[int, ...], bytes]:
    try:
        return read_idx(path, ndim=ndim, max_bytes=MAX_IDX_BYTES)
    except DataError as exc:
        raise DatasetError(str(exc)) from exc.__cause__


def where_to_put(entry: CatalogEntry, datasets_dir: Path) -> str:
    """The fix an error message offers: which files, and in which folder."""
    first, *others = (str(datasets_dir / folder) for folder in entry.folders)
    return (
        f"put the four IDX files ({', '.join(entry.files)}, plain or .gz) in {first}"
        f" (or in {' or '.join(others)})"
    )
