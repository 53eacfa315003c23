"""Importing the user's own data: the request's fields, the import roots, the split, the write.

``POST /datasets/import`` names a path on the orchestrator's disk. It must lie inside an
import root (``FEDAVG_IMPORT_ROOTS``): checked on the path as given, with ``..`` folded
away, before the disk is touched, and again once every symbolic link is resolved, so
neither ``..`` nor a link can lead out (inside an image folder, the reader refuses links).
The data are read by ``node.shared.local_data`` under its limits; every class that holds
samples needs at least two, one for each split. The split is ``stratified_split``, seeded
by the request, and ``write_splits`` writes it, info last. Nothing is written until all is
read and checked, so a refusal leaves no folder, or the old dataset as it was; a write
that fails leaves no folder behind for a new id. Everything here blocks (disk, CPU): the
server calls it in a thread.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
import torch

from node.shared.errors import DataError
from node.shared.local_data import DEFAULT_LIMITS, DataLimits, read_local_data
from server.core.shard_plan import MAX_SEED
from server.datasets.catalog import CATALOG
from server.datasets.common import (
    DatasetError,
    DatasetExists,
    OutsideImportRoots,
    Splits,
    stratified_split,
)
from server.datasets.progress import Progress, silent
from server.datasets.store import DATASET_ID_RE, DatasetInfo, Schema, dataset_info, write_splits

log = structlog.get_logger(__name__)

IMPORT_SOURCE: Final = "import"
DEFAULT_TEST_FRACTION: Final = 0.2
MAX_PATH_CHARS: Final = 4096
FIELDS: Final = ("path", "dataset_id", "test_fraction", "seed", "class_names", "size", "force")


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """An import's fields, each checked as it is parsed (``DataError`` naming the field)."""

    path: str
    dataset_id: str
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 0
    class_names: tuple[str, ...] | None = None  # arrays only; else "0".."K-1"
    size: tuple[int, int] | None = None  # image folders only: (height, width) to resize to
    force: bool = False  # replace an imported dataset of the same id

    @classmethod
    def from_body(cls, body: Mapping[str, Any] | None) -> ImportRequest:
        if body is None:
            raise DataError(
                'body: a JSON object is required, like {"path": "/.../imports/pets", '
                '"dataset_id": "pets"}'
            )
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise DataError(
                f"{unknown[0][:60]!r}: unknown field; the fields are {', '.join(FIELDS)}"
            )
        return cls(
            path=_path(body.get("path")),
            dataset_id=_dataset_id(body.get("dataset_id")),
            test_fraction=_fraction(body.get("test_fraction", DEFAULT_TEST_FRACTION)),
            seed=_seed(body.get("seed", 0)),
            class_names=_names(body.get("class_names")),
            size=_size(body.get("size")),
            force=_flag(body.get("force", False)),
        )


def _path(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_PATH_CHARS or "\0" in value:
        raise DataError(
            f"path: must be a path on the orchestrator (1..{MAX_PATH_CHARS} characters)"
        )
    if not Path(value).is_absolute():
        raise DataError(f"path: {value[:200]!r} is not absolute")
    return value


def _dataset_id(value: object) -> str:
    if not isinstance(value, str) or not DATASET_ID_RE.fullmatch(value):
        raise DataError(f"dataset_id: must match {DATASET_ID_RE.pattern}, got {str(value)[:80]!r}")
    if value in CATALOG:
        raise DataError(
            f"dataset_id: {value!r} is a catalogue dataset (POST /datasets/{value}/prepare); "
            "choose another id"
        )
    return value


def _fraction(value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not (math.isfinite(value) and 0 < value < 1)
    ):
        raise DataError(f"test_fraction: must be a number between 0 and 1, got {value!r:.40}")
    return float(value)


def _seed(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise DataError(f"seed: must be an integer 0..{MAX_SEED}, got {value!r:.40}")
    return value


def _names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise DataError("class_names: must be a list of strings, one per label 0..K-1")
    return tuple(value)


def _size(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in value)
    ):
        raise DataError("size: must be [height, width] in pixels")
    return value[0], value[1]


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"force: must be true or false, got {value!r:.40}")
    return value


def resolve_in_roots(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of ``raw``, which must be inside one of ``roots`` both as written (with
    ``..`` folded away) and once its links are resolved; refused with ``OutsideImportRoots``
    naming the setting, or ``DataError`` when it does not exist."""
    setting = f"FEDAVG_IMPORT_ROOTS={','.join(str(root) for root in roots)}"
    given = Path(raw)
    if not given.is_absolute():
        raise DataError(f"path: {raw[:200]!r} is not absolute")
    written = [Path(os.path.normpath(root)) for root in roots]
    real_roots = [root.resolve() for root in written]
    if not any(Path(os.path.normpath(given)).is_relative_to(r) for r in (*written, *real_roots)):
        raise OutsideImportRoots(f"path: {raw} is outside the import roots ({setting})")
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError:
        raise DataError(f"path: {raw} does not exist") from None
    except (OSError, RuntimeError, ValueError) as exc:  # a loop of links; an unencodable name
        raise DataError(f"path: cannot resolve {raw} ({exc})") from None
    if not any(real.is_relative_to(root) for root in real_roots):
        raise OutsideImportRoots(
            f"path: {raw} resolves to {real}, outside the import roots ({setting})"
        )
    return real


def check_target(datasets_dir: Path, dataset_id: str, *, force: bool) -> None:
    """An id already imported may only be replaced with ``force`` (``DatasetExists``: 409)."""
    try:
        existing = dataset_info(datasets_dir, dataset_id)
    except DatasetError:  # unreadable, but still somebody's dataset
        held: str | None = "its info.json is unreadable"
    else:
        held = None if existing is None else f"from {existing.source_detail}"
    if held is not None and not force:
        raise DatasetExists(
            f'dataset_id: {dataset_id!r} is already imported ({held}); send "force": true '
            "to replace it"
        )


def import_dataset(
    datasets_dir: Path,
    request: ImportRequest,
    roots: Sequence[Path],
    limits: DataLimits = DEFAULT_LIMITS,
    progress: Progress = silent,
) -> DatasetInfo:
    """Read, check, split and write one import; see the module's docstring for the rules."""
    path = resolve_in_roots(request.path, roots)
    check_target(datasets_dir, request.dataset_id, force=request.force)
    data = read_local_data(
        path, limits, class_names=request.class_names, size=request.size, progress=progress
    )
    _check_splittable(data.y, data.class_names)
    train, test = stratified_split(
        data.y, len(data.class_names), request.test_fraction, request.seed
    )
    detail = (
        f"{data.data_format} {path}: {data.detail}; stratified split, "
        f"{request.test_fraction:g} of each class to test, seed {request.seed}"
    )
    splits = Splits(data.x[train], data.y[train], data.x[test], data.y[test], IMPORT_SOURCE, detail)
    schema = Schema(request.dataset_id, tuple(data.x.shape[1:]), data.class_names)
    info = _write(datasets_dir, schema, splits, progress)
    log.info(
        "dataset_imported",
        dataset=info.dataset_id,
        source_detail=detail,
        train=info.train_samples,
        test=info.test_samples,
    )
    return info


def _check_splittable(y: torch.Tensor, names: tuple[str, ...]) -> None:
    counts = torch.bincount(y, minlength=len(names)).tolist()
    for label, count in enumerate(counts):
        if count == 1:
            raise DataError(
                f"classes: class {names[label]!r} has 1 sample; a class with samples needs at "
                "least 2, one for the train split and one for test"
            )


def _write(datasets_dir: Path, schema: Schema, splits: Splits, progress: Progress) -> DatasetInfo:
    folder = datasets_dir / schema.dataset_id
    fresh = not folder.exists()
    try:
        return write_splits(datasets_dir, schema, splits, progress)
    except BaseException:
        if fresh:  # a new id leaves nothing behind; a replaced one is "not prepared"
            shutil.rmtree(folder, ignore_errors=True)
        raise
