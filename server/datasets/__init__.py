"""Datasets: the catalogue of what this server can prepare, preparing it, and the prepared files.

``catalog`` lists the entries; ``prepare`` tries their sources in order (``idx`` and
``cifar`` read files, ``download`` asks torchvision, ``fallback`` is MNIST's offline
subset); ``imports`` brings in the user's own data (``node.shared.local_data`` reads it);
``store`` owns the prepared splits and ``info.json`` on disk. Other modules import from here.
"""

from server.datasets.catalog import CATALOG, MNIST_ID, CatalogEntry, catalog_entry
from server.datasets.common import (
    DatasetError,
    DatasetExists,
    OutsideImportRoots,
    UnknownDataset,
    stratified_split,
)
from server.datasets.imports import IMPORT_SOURCE, ImportRequest, import_dataset
from server.datasets.prepare import prepare_dataset, prepare_mnist
from server.datasets.progress import Progress, Throttled
from server.datasets.store import (
    DATASET_ID_RE,
    SPLITS,
    DatasetInfo,
    dataset_info,
    list_datasets,
    load_split,
    split_path,
)

__all__ = [
    "CATALOG",
    "DATASET_ID_RE",
    "IMPORT_SOURCE",
    "MNIST_ID",
    "SPLITS",
    "CatalogEntry",
    "DatasetError",
    "DatasetExists",
    "DatasetInfo",
    "ImportRequest",
    "OutsideImportRoots",
    "Progress",
    "Throttled",
    "UnknownDataset",
    "catalog_entry",
    "dataset_info",
    "import_dataset",
    "list_datasets",
    "load_split",
    "prepare_dataset",
    "prepare_mnist",
    "split_path",
    "stratified_split",
]
