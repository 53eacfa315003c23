"""The catalogue: every dataset this server can prepare, where torchvision keeps it, what it holds.

An entry is data only; ``idx.py`` and ``cifar.py`` read the files it names, ``download.py``
asks torchvision for them. Folders are relative to the datasets folder and laid out as
torchvision's ``root=<datasets folder>`` leaves them, so a machine that already ran
torchvision (or had the files copied in) needs no network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from server.datasets.common import UnknownDataset

MNIST_ID: Final = "mnist"
MNIST_FILES: Final = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DIGITS: Final = tuple(str(d) for d in range(10))


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One preparable dataset. ``files`` are, for ``idx``, train images, train labels, test
    images, test labels; for ``cifar``, the python version's batches (``.bin`` for binary)."""

    dataset_id: str
    title: str
    torchvision_class: str  # the torchvision.datasets class whose download fetches it
    layout: Literal["idx", "cifar"]
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    folders: tuple[str, ...]  # searched in order for the files
    download_folder: str  # where torchvision's download leaves them
    download_paths: tuple[str, ...]  # what a download writes: new files there go if it fails
    torchvision_split: str | None = None  # EMNIST's ``split=`` argument
    transposed: bool = False  # EMNIST's IDX images are stored column by column
    offline_fallback: bool = False  # only MNIST has a subset shipped in a package

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _idx(
    dataset_id: str,
    title: str,
    cls: str,
    classes: tuple[str, ...],
    *,
    files: tuple[str, ...] = MNIST_FILES,
    folders: tuple[str, ...] | None = None,
    split: str | None = None,
    transposed: bool = False,
    offline_fallback: bool = False,
) -> CatalogEntry:
    """An IDX dataset of 28x28 greyscale images, kept where torchvision's ``cls`` puts it."""
    return CatalogEntry(
        dataset_id=dataset_id,
        title=title,
        torchvision_class=cls,
        layout="idx",
        input_shape=(1, 28, 28),
        class_names=classes,
        files=files,
        folders=folders or (f"{cls}/raw", f"{dataset_id}/raw"),
        download_folder=f"{cls}/raw",
        download_paths=(cls,),
        torchvision_split=split,
        transposed=transposed,
        offline_fallback=offline_fallback,
    )


_FASHION = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_KUZUSHIJI = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
_CIFAR10 = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_EMNIST_FILES = tuple(
    f"emnist-digits-{split}-{kind}"
    for split in ("train", "test")
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
)
_ENTRIES = (
    # The seed's folders for MNIST: the datasets folder itself first, then torchvision's.
    _idx(
        MNIST_ID,
        "MNIST",
        "MNIST",
        DIGITS,
        folders=("", "MNIST/raw", "mnist/raw"),
        offline_fallback=True,
    ),
    _idx("fashion-mnist", "Fashion-MNIST", "FashionMNIST", _FASHION),
    _idx("kmnist", "Kuzushiji-MNIST", "KMNIST", _KUZUSHIJI),
    _idx(
        "emnist-digits",
        "EMNIST digits",
        "EMNIST",
        DIGITS,
        files=_EMNIST_FILES,
        split="digits",
        transposed=True,
    ),
    CatalogEntry(
        dataset_id="cifar10",
        title="CIFAR-10",
        torchvision_class="CIFAR10",
        layout="cifar",
        input_shape=(3, 32, 32),
        class_names=_CIFAR10,
        files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        # torchvision downloads the python version; the binary one is accepted when present.
        folders=("cifar-10-batches-py", "cifar-10-batches-bin"),
        download_folder="cifar-10-batches-py",
        download_paths=("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    ),
)
CATALOG: Final[Mapping[str, CatalogEntry]] = MappingProxyType(
    {entry.dataset_id: entry for entry in _ENTRIES}
)


def catalog_entry(dataset_id: str) -> CatalogEntry:
    entry = CATALOG.get(dataset_id)
    if entry is None:
        raise UnknownDataset(
            f"unknown dataset {dataset_id[:80]!r}: this server can prepare {', '.join(CATALOG)}"
        )
    return entry
