"""Prepared datasets on disk: the id rules, ``info.json``, and the two safetensors splits.

Layout: ``<datasets_dir>/<id>/train.safetensors``, ``test.safetensors`` and ``info.json``.
``info.json`` is written last and removed first, each file atomically, so a dataset that a
crash left half-written is simply "not prepared".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog
import torch

from node.shared.atomic import atomic_write_bytes
from node.shared.protocol import DATASET_NAME_RE
from node.shared.shards import ShardError, decode_xy, encode_xy
from node.shared.weights import sha256_hex
from server.datasets.catalog import CATALOG, CatalogEntry
from server.datasets.common import DatasetError, Splits, UnknownDataset
from server.datasets.progress import Progress, silent

log = structlog.get_logger(__name__)

DATASET_ID_RE: Final = DATASET_NAME_RE  # the same names for server datasets and node data
SPLITS: Final = ("train", "test")

_T = TypeVar("_T")

SEED_NORM: Final = ((0.1307,), (0.3081,))
"""MNIST's published mean and std, the seed's normalisation: what an info.json written before
the statistics were recorded stands for."""


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
    class_names: tuple[str, ...] = ()
    # Per channel, the mean and std of the training pixels scaled to [0, 1]: a job's model
    # normalises with them unless its spec says otherwise.
    norm_mean: tuple[float, ...] = SEED_NORM[0]
    norm_std: tuple[float, ...] = SEED_NORM[1]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "norm_mean": list(self.norm_mean),
            "norm_std": list(self.norm_std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """Parse with every field checked: the file is on disk, where anyone may have edited it."""
        shape = data.get("input_shape")
        if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
            raise DatasetError("dataset info field 'input_shape' must be a list of positive ints")
        info = cls(
            dataset_id=_check_id(_field(data, "dataset_id", str)),
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
        return _with_norm(_with_class_names(info, data.get("class_names")), data)


def _field(data: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"dataset info field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _with_class_names(info: DatasetInfo, names: object) -> DatasetInfo:
    """The recorded names (none, or one per class); an info.json from before they were
    recorded gets the catalogue's."""
    if names is None:
        entry = CATALOG.get(info.dataset_id)
        if entry is None or entry.num_classes != info.num_classes:
            return info
        names = list(entry.class_names)
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(names) not in (0, info.num_classes)
    ):
        raise DatasetError(
            f"dataset info field 'class_names' must be a list of {info.num_classes} strings"
        )
    return replace(info, class_names=tuple(names))


def _with_norm(info: DatasetInfo, data: Mapping[str, Any]) -> DatasetInfo:
    if "norm_mean" not in data and "norm_std" not in data:
        return info
    stats = [data.get("norm_mean"), data.get("norm_std")]
    channels = info.input_shape[0] if len(info.input_shape) == 3 else 1
    for values in stats:
        if (
            not isinstance(values, list)
            or len(values) not in (1, channels)
            or not all(type(v) in (int, float) and math.isfinite(v) for v in values)
        ):
            raise DatasetError(
                f"dataset info fields 'norm_mean' and 'norm_std' must be lists of one or "
                f"{channels} finite numbers"
            )
    if not all(v > 0 for v in stats[1]):  # type: ignore[union-attr]
        raise DatasetError("dataset info field 'norm_std' must be positive")
    mean, std = (tuple(float(v) for v in values) for values in stats)  # type: ignore[union-attr]
    return replace(info, norm_mean=mean, norm_std=std)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel of uint8 ``x`` [N, C, H, W], the mean and std of its pixels over 255
    (counted in float64, so a large set does not lose precision; a constant channel gets a
    std of 1, which leaves it centred rather than divided by zero)."""
    counts = torch.stack(
        [torch.bincount(x[:, c].flatten(), minlength=256) for c in range(x.shape[1])]
    )
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1).to(torch.float64)
    mean = (counts * levels).sum(dim=1) / total
    var = (counts * levels**2).sum(dim=1) / total - mean**2
    std = var.clamp(min=0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (
        tuple(round(float(v), 4) for v in mean),
        tuple(round(float(v), 4) for v in std),
    )


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
    """``(x uint8 [N, *input_shape], y int64 [N])``, checked against the recorded sha256.

    ``x`` takes the shape the info records, (C, H, W) per sample, whatever the file holds:
    MNIST prepared before the catalogue was stored as [N, 28, 28].
    """
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
        x, y = decode_xy(data, input_shape=info.input_shape, num_classes=info.num_classes)
    except ShardError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    return x.reshape(x.shape[0], *info.input_shape), y


def intact_info(datasets_dir: Path, dataset_id: str) -> DatasetInfo | None:
    """The info of a preparation whose files still match it; None when there is none."""
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


@dataclass(frozen=True, slots=True)
class Schema:
    """What a dataset's samples are, whatever it came from (a catalogue entry, an import)."""

    dataset_id: str
    input_shape: tuple[int, ...]  # (C, H, W)
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, entry: CatalogEntry) -> Schema:
        return cls(entry.dataset_id, entry.input_shape, entry.class_names)


def write_splits(
    datasets_dir: Path, entry: Schema, splits: Splits, progress: Progress = silent
) -> DatasetInfo:
    """Write both splits, then the info that vouches for them."""
    dataset_id = entry.dataset_id
    # Remove the old info first: a crash between the split writes must not leave an info.json
    # that vouches for one new and one old split.
    _info_path(datasets_dir, dataset_id).unlink(missing_ok=True)
    digests = {}
    pairs = (("train", splits.train_x, splits.train_y), ("test", splits.test_x, splits.test_y))
    mean, std = channel_stats(splits.train_x)
    progress("write", 0, len(pairs))
    for done, (split, x, y) in enumerate(pairs, 1):
        if tuple(x.shape[1:]) != entry.input_shape:  # a reader's bug, not the user's files
            raise DatasetError(f"{split} samples are {tuple(x.shape[1:])}, not {entry.input_shape}")
        # One metadata key: safetensors keeps metadata in a hash map whose order varies per
        # call, so several keys would give the same tensors a different sha256 each time.
        meta = json.dumps({"dataset": dataset_id, "split": split, "source": splits.source})
        data = encode_xy(x.contiguous(), y, {"fedavg_dataset": meta})
        atomic_write_bytes(split_path(datasets_dir, dataset_id, split), data)
        digests[split] = sha256_hex(data)
        progress("write", done, len(pairs))
    info = DatasetInfo(
        dataset_id=dataset_id,
        source=splits.source,
        source_detail=splits.source_detail,
        train_samples=int(splits.train_y.numel()),
        test_samples=int(splits.test_y.numel()),
        num_classes=len(entry.class_names),
        input_shape=entry.input_shape,
        train_sha256=digests["train"],
        test_sha256=digests["test"],
        prepared_at=datetime.now(UTC).isoformat(timespec="seconds"),
        class_names=entry.class_names,
        norm_mean=mean,
        norm_std=std,
    )
    text = json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(_info_path(datasets_dir, dataset_id), text.encode())
    return info
