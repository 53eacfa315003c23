"""A node's own datasets (``--data NAME=PATH``): read once under limits, cached decoded, split.

Data that never leaves the node (issue 16). Each ``NAME=PATH`` names a dataset and where it
lies: an image-folder tree, a ``.safetensors``/``.npz`` file with ``x`` and ``y``, or an IDX
images file with its labels beside it, read by ``node.shared.local_data`` with the same
readers and limits as the server's import. What the node may tell the server about it is
:meth:`NodeDataset.announcement`: the name, the schema, the sample counts and a fingerprint,
never a sample; the label histogram only when the user allows it.

**Cache.** Decoding a folder of images is slow, so the decoded set is kept in
``<cache>/local-data/<name>-<key>.safetensors``, where ``key`` is a sha256 of what the
source is on disk (each file's relative path, size and modification time). A changed file
changes the key; a cache file that does not parse, or whose content no longer matches the
fingerprint it records, is read again from the source. Written atomically.

**Splits.** A seeded, stratified test split (``test_split`` of each class, the server's one
rule, ``node.shared.splits``) is held out for evaluating global models where the data is;
the rest is what the node trains on (its validation split is cut from that, as in shard
mode).

**Fingerprint.** A sha256 of the decoded content (shape, class names, pixels, labels), the
same on every machine that holds the same data, whatever its file names or format: it lets
the server see two nodes with the same data, and a restarted node with the data it had.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch

from node.shared.atomic import atomic_write_bytes
from node.shared.errors import DataError, SpecError, WeightsError
from node.shared.idx import is_idx_images, labels_beside
from node.shared.local_data import (
    DEFAULT_LIMITS,
    DataLimits,
    LocalData,
    read_local_data,
)
from node.shared.model import ModelSpec
from node.shared.protocol import DATASET_NAME_RE, OwnDataset
from node.shared.shards import ShardError, decode_xy, encode_xy
from node.shared.splits import stratified_split
from node.shared.weights import read_metadata

CACHE_FORMAT: Final = "fedavg-local-data-1"
MAX_DATASETS: Final = 32  # --data options on one node
MAX_SOURCE_FILES: Final = 2_000_000  # files walked to key a folder (DataLimits bounds the images)


@dataclass(frozen=True, slots=True)
class DataSpec:
    """One ``--data NAME=PATH``."""

    name: str
    path: Path


def parse_data_specs(values: Sequence[str], setting: str = "--data") -> tuple[DataSpec, ...]:
    """``NAME=PATH`` values (as flags or ``NODE_DATA`` gives them), checked; each error
    names ``setting`` and the value."""
    if len(values) > MAX_DATASETS:
        raise DataError(f"{setting}: at most {MAX_DATASETS} datasets, got {len(values)}")
    specs: dict[str, DataSpec] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name = name.strip()
        if not sep or not path.strip():
            raise DataError(f"{setting}: {value[:200]!r} is not NAME=PATH")
        if not DATASET_NAME_RE.fullmatch(name):
            raise DataError(
                f"{setting}: dataset name {name[:80]!r} must match {DATASET_NAME_RE.pattern}"
            )
        if name in specs:
            raise DataError(f"{setting}: dataset {name!r} is given twice")
        specs[name] = DataSpec(name, Path(path.strip()).expanduser())
    return tuple(specs.values())


@dataclass(frozen=True, slots=True)
class DataSchema:
    """What a model trained on the data must fit; the server compares nodes by it."""

    input_shape: tuple[int, int, int]  # (C, H, W), uint8 pixels
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True, slots=True)
class NodeDataset:
    """One of the node's datasets, decoded and split."""

    name: str
    schema: DataSchema
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: str
    detail: str  # the format and the source path, for the node's log

    def announcement(self, *, share_label_counts: bool = False) -> OwnDataset:
        """What the node tells the server: no sample, and label counts only if allowed."""
        counts = None
        if share_label_counts:
            counts = tuple(torch.bincount(self.train_y, minlength=self.schema.num_classes).tolist())
        return OwnDataset(
            name=self.name,
            input_shape=self.schema.input_shape,
            class_names=self.schema.class_names,
            train_samples=len(self.train_y),
            test_samples=len(self.test_y),
            fingerprint=self.fingerprint,
            label_counts=counts,
        )


def misfit(spec: ModelSpec, schema: DataSchema) -> str | None:
    """Why a model of ``spec`` cannot be trained or evaluated on data of ``schema``, or None."""
    try:
        spec.check_input(schema.input_shape)
    except SpecError as exc:
        return str(exc)
    if spec.num_classes != schema.num_classes:
        return (
            f"num_classes: the model has {spec.num_classes} outputs, "
            f"the data has {schema.num_classes} classes"
        )
    return None


def local_job_refusal(
    datasets: Mapping[str, NodeDataset], name: str, fingerprint: str, spec: ModelSpec
) -> str | None:
    """Why this node cannot train a job over its own dataset ``name``, which the server
    knows by ``fingerprint`` (what the node announced), with a model of ``spec``; or None."""
    data = datasets.get(name)
    if data is None:
        return f"this node holds no dataset {name[:80]!r} (it holds {sorted(datasets)})"
    if data.fingerprint != fingerprint:
        return (
            f"dataset {name!r} has fingerprint {data.fingerprint[:12]}, the job expects "
            f"{fingerprint[:12]}: not the data this node announced"
        )
    return misfit(spec, data.schema)


def load_node_dataset(
    spec: DataSpec,
    cache_dir: Path,
    *,
    test_split: float = 0.2,
    seed: int = 0,
    limits: DataLimits = DEFAULT_LIMITS,
) -> NodeDataset:
    """Read (or take from the cache) and split one dataset.

    Raises:
        DataError: The path is missing or unreadable, or the data breaks a limit; the
            message names the dataset.
    """
    if not 0 < test_split < 1:
        raise DataError(f"test_split must be within (0, 1), got {test_split}")
    try:
        data = _cached_or_read(spec, cache_dir, limits)
    except DataError as exc:
        raise DataError(f"dataset {spec.name!r} ({spec.path}): {exc}") from None
    channels, height, width = data.x.shape[1:]
    schema = DataSchema((channels, height, width), data.class_names)
    train, test = stratified_split(data.y, schema.num_classes, test_split, seed)
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"dataset {spec.name!r}: {len(data.y)} samples leave nothing to "
            f"{'train on' if len(train) == 0 else 'test on'} with test_split {test_split}"
        )
    return NodeDataset(
        name=spec.name,
        schema=schema,
        train_x=data.x[train],
        train_y=data.y[train],
        test_x=data.x[test],
        test_y=data.y[test],
        fingerprint=fingerprint(data),
        detail=f"{data.data_format} {spec.path}: {data.detail}",
    )


def fingerprint(data: LocalData) -> str:
    """sha256 of the decoded content: shape, class names, pixels and labels."""
    digest = hashlib.sha256()
    head = {"shape": list(data.x.shape), "class_names": list(data.class_names)}
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(data.x.contiguous().numpy().tobytes())
    digest.update(data.y.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cached_or_read(spec: DataSpec, cache_dir: Path, limits: DataLimits) -> LocalData:
    if not spec.path.exists():
        raise DataError("no such file or folder")
    path = cache_dir / "local-data" / f"{spec.name}-{source_key(spec.path)}.safetensors"
    cached = _read_cache(path)
    if cached is not None:
        return cached
    data = read_local_data(spec.path, limits)
    meta = {
        "format": CACHE_FORMAT,
        "class_names": json.dumps(list(data.class_names)),
        "data_format": data.data_format,
        "detail": data.detail,
        "fingerprint": fingerprint(data),
    }
    atomic_write_bytes(path, encode_xy(data.x, data.y, meta))
    return data


def _read_cache(path: Path) -> LocalData | None:
    """The cached set, or None when there is none or it does not hold what it says."""
    try:
        raw = path.read_bytes()
        meta = read_metadata(raw)
        x, y = decode_xy(raw)
        names = tuple(json.loads(meta["class_names"]))
    except (OSError, WeightsError, ShardError, KeyError, ValueError, TypeError):
        return None
    if meta.get("format") != CACHE_FORMAT or x.dim() != 4:
        return None
    data = LocalData(x, y, names, meta.get("data_format", ""), meta.get("detail", ""))
    return data if fingerprint(data) == meta.get("fingerprint") else None


def source_key(path: Path) -> str:
    """sha256 of what the source is on disk: each file's relative path, size and mtime."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for relative, stat in _files(path):
        digest.update(f"\0{relative}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _files(path: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every file of a folder tree in a fixed order (links as links), or the file itself and
    an IDX images file's labels beside it."""
    if not path.is_dir():
        beside = labels_beside(path) if is_idx_images(path) else None
        for file in (path, *([beside] if beside is not None and beside.exists() else [])):
            yield file.name, file.stat(follow_symlinks=False)
        return
    seen = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            seen += 1
            if seen > MAX_SOURCE_FILES:
                raise DataError(f"more than {MAX_SOURCE_FILES:,} files under the folder")
            full = Path(root) / name
            yield str(full.relative_to(path)), full.stat(follow_symlinks=False)
