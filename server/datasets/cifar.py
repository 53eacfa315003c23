"""CIFAR-10 from its python batches (torchvision's download) or its binary batches.

The python version is pickled, and a pickle can run any callable it names. These files come
from the network or from whoever filled the datasets folder, so they are read by
``BatchUnpickler``: it resolves only the few numpy names an array needs, each checked before
it is called, and refuses every other global without importing it. The binary version
(records of one label byte and 3,072 pixel bytes) needs no such care.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import structlog
import torch

from server.datasets.catalog import CatalogEntry
from server.datasets.common import DatasetError, Splits
from server.datasets.progress import Progress

log = structlog.get_logger(__name__)

PIXELS: Final = 3 * 32 * 32  # one image, channel planes R, G, B, each row by row
RECORD: Final = 1 + PIXELS  # a binary record: the label byte, then the pixels
MAX_BATCH_BYTES: Final = 64 * 1024 * 1024  # a real batch (10,000 images) is ~31 MB
MAX_BATCH_IMAGES: Final = MAX_BATCH_BYTES // PIXELS


class Refused(pickle.UnpicklingError):
    """A pickle that names something a CIFAR batch does not need."""


def _numpy_function(name: str, *modules: str) -> Callable[..., Any]:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``; take the first that exists."""
    for module in modules:
        try:
            found: Callable[..., Any] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return found
    raise ImportError(f"numpy has no {name} in {modules}")


_RECONSTRUCT = _numpy_function("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_FROMBUFFER = _numpy_function("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")


def _reconstruct(subtype: object, shape: object, typecode: object) -> Any:
    # numpy pickles start each array empty and fill it in BUILD (__setstate__), which checks
    # the data against the shape; so an empty start is all a batch needs, and all we allow.
    if subtype is not np.ndarray or shape != (0,):
        raise Refused(f"array reconstruction of {subtype!r} with shape {shape!r}")
    return _RECONSTRUCT(subtype, shape, typecode)


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> Any:
    # Pickle protocol 5 (numpy >= 1.16) writes arrays this way: the bytes are in the file.
    if not isinstance(buffer, bytes | bytearray):
        raise Refused(f"array from a {type(buffer).__name__}, not bytes")
    return _FROMBUFFER(buffer, dtype, shape, order)


def _latin1(text: object, encoding: object) -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


ALLOWED: Final[dict[tuple[str, str], Any]] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the real batches (numpy 1)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: a dict of a uint8 array, label lists and byte strings."""

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:  # refused by name: nothing is imported, nothing runs
            raise Refused(f"global {module}.{name}")
        return found


def unpickle_batch(path: Path, data: bytes) -> object:
    """The object a batch file holds, or a DatasetError naming the file and what was refused."""
    try:
        # encoding="bytes": the real files were written by Python 2, whose str is bytes.
        return BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Refused as exc:
        raise DatasetError(
            f"{path}: refused to unpickle {exc}: a CIFAR batch holds only a numpy array and "
            "labels; replace the file with the original from cifar-10-python.tar.gz"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a CIFAR python batch ({exc})") from None
    except (KeyError, IndexError, MemoryError, OverflowError, RecursionError) as exc:
        raise DatasetError(f"{path}: not a CIFAR python batch ({type(exc).__name__})") from None


def read_cifar_folders(
    entry: CatalogEntry, folders: list[Path], progress: Progress
) -> Splits | None:
    """The first folder holding a whole set of python batches or of binary (``.bin``) ones."""
    for folder in folders:
        for suffix, kind in (("", "python"), (".bin", "binary")):
            paths = [folder / f"{name}{suffix}" for name in entry.files]
            present = [p for p in paths if p.is_file()]
            if len(present) == len(paths):
                return _read_set(entry, folder, paths, kind, progress)
            if present:
                missing = [p.name for p in paths if not p.is_file()]
                log.warning(
                    "dataset_files_incomplete",
                    dataset=entry.dataset_id,
                    folder=str(folder),
                    missing=missing,
                )
    return None


def _read_set(
    entry: CatalogEntry, folder: Path, paths: list[Path], kind: str, progress: Progress
) -> Splits:
    """The last file is the test batch; the ones before it make the training set."""
    read = _python_batch if kind == "python" else _binary_batch
    images, labels = [], []
    progress("read", 0, len(paths))
    for done, path in enumerate(paths, 1):
        x, y = read(path, entry.num_classes)
        images.append(x)
        labels.append(y)
        progress("read", done, len(paths))
    train_x, test_x = torch.cat(images[:-1]), images[-1]
    train_y, test_y = torch.cat(labels[:-1]), labels[-1]
    detail = f"{entry.title} {kind} batches in {folder}: {', '.join(p.name for p in paths)}"
    return Splits(train_x, train_y, test_x, test_y, f"cifar-{kind}-batches", detail)


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BATCH_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read CIFAR batch: {exc}") from exc
    if len(data) > MAX_BATCH_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_BATCH_BYTES} bytes, not a CIFAR batch")
    return data


def _python_batch(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = unpickle_batch(path, _read_bounded(path))
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: a CIFAR batch is a dict, got {type(batch).__name__}")
    # Keys are bytes as the real (Python 2) files are read; a Python 3 writer gives str.
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{path}: 'data' must be a uint8 array [N, {PIXELS}]")
    if data.shape[1] != PIXELS or not 0 < data.shape[0] <= MAX_BATCH_IMAGES:
        raise DatasetError(f"{path}: 'data' is {data.shape}, expected [N, {PIXELS}]")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DatasetError(f"{path}: 'labels' must be a list of ints")
    if len(labels) != data.shape[0]:
        raise DatasetError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    return _tensors(path, data, np.asarray(labels, dtype=np.int64), num_classes)


def _binary_batch(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw = _read_bounded(path)
    if not raw or len(raw) % RECORD:
        raise DatasetError(
            f"{path}: {len(raw)} bytes is not a whole number of {RECORD}-byte records "
            "(label byte + 3,072 pixels); the file is truncated or not a CIFAR-10 binary batch"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    return _tensors(path, records[:, 1:], records[:, 0].astype(np.int64), num_classes)


def _tensors(
    path: Path, data: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels must lie in 0..{num_classes - 1}")
    # Rows are R, G and B planes of 32 rows of 32: a reshape is already NCHW. Copied, so the
    # tensors own writable memory (frombuffer's view of the file bytes is read-only).
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.copy())


def where_to_put(entry: CatalogEntry, datasets_dir: Path) -> str:
    """The fix an error message offers: which files, and in which folder."""
    python, binary = (datasets_dir / folder for folder in entry.folders)
    names, bin_names = ", ".join(entry.files), ", ".join(f"{n}.bin" for n in entry.files)
    return (
        f"put the python batches ({names}; from cifar-10-python.tar.gz) in {python}, "
        f"or the binary ones ({bin_names}; from cifar-10-binary.tar.gz) in {binary}"
    )
