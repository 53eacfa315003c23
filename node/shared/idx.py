"""The IDX file parser (LeCun's MNIST format), shared by the server's catalogue and local data.

IDX: magic 0x0000080N (unsigned bytes, N dims), N big-endian uint32 dims, then the bytes,
plain or gzipped. The whole file is read at most ``max_bytes + 1`` bytes deep, so a gzip
bomb costs no more than the limit.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Final

from node.shared.errors import DataError

# EMNIST digits' train images are 188 MB, the largest in the server's catalogue.
MAX_IDX_BYTES: Final = 256 * 1024 * 1024
IMAGES_PART, LABELS_PART = "images-idx3-ubyte", "labels-idx1-ubyte"


def read_idx(
    path: Path, *, ndim: int, max_bytes: int = MAX_IDX_BYTES
) -> tuple[tuple[int, ...], bytes]:
    """Header and payload of an unsigned-byte IDX file (magic 0x0000080N, big-endian dims).

    Raises:
        DataError: The file cannot be read, is over ``max_bytes``, or is not such a file;
            the message starts with the path.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from exc
    if len(raw) > max_bytes:
        raise DataError(f"{path}: larger than {max_bytes} bytes, not an IDX file we know")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    if raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataError(f"{path}: IDX magic is 0x{raw[:4].hex()}, expected 0x0000080{ndim}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        size = len(raw) - header
        raise DataError(f"{path}: dims {dims} need {math.prod(dims)} data bytes, file has {size}")
    return dims, raw[header:]


def is_idx_images(path: Path) -> bool:
    """An images file named as MNIST's are (``*-images-idx3-ubyte``, plain or ``.gz``)."""
    return path.name.removesuffix(".gz").endswith(IMAGES_PART)


def labels_beside(images: Path) -> Path:
    """The labels file that goes with an images file: the same name with ``labels-idx1``,
    plain or gzipped, whichever exists (the plain name when neither does)."""
    stem = images.name.removesuffix(".gz").removesuffix(IMAGES_PART)
    plain = images.with_name(stem + LABELS_PART)
    gzipped = images.with_name(stem + LABELS_PART + ".gz")
    return gzipped if gzipped.is_file() and not plain.is_file() else plain
