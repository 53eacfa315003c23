"""Local data files written by the tests: image folders (PNG, JPEG), crafted PNG headers, and
``.npz`` / ``.safetensors`` arrays. Shared by the reader, import and API tests."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from node.shared.weights import encode_tensors


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """A random image of (height, width) ``size``; returns its pixels as written (PNG) or as
    given to the encoder (JPEG, which is lossy)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return pixels


def write_image_folder(
    root: Path,
    counts: Mapping[str, int],
    size: tuple[int, int] = (6, 8),
    mode: str = "RGB",
    suffix: str = ".png",
) -> Path:
    """``root/<class>/<i><suffix>`` for each class's count of images; returns ``root``."""
    for k, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_image(root / name / f"{i}{suffix}", size, mode, seed=100 * k + i)
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (8-bit greyscale) and whose pixel data is
    garbage: decoding it fails, so a refusal that names its size was made from the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"garbage")
        + _chunk(b"IEND", b"")
    )


def write_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    members: dict[str, Any] = dict(arrays)
    with path.open("wb") as file:
        if compressed:
            np.savez_compressed(file, **members)
        else:
            np.savez(file, **members)
    return path


def write_safetensors(path: Path, **tensors: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_tensors({k: t.contiguous() for k, t in tensors.items()}))
    return path


def labelled_arrays(
    n: int, shape: tuple[int, ...] = (5, 4), classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 ``x`` [n, *shape] and labels cycling through ``classes``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % classes


def write_idx_pair(
    folder: Path, x: np.ndarray, y: np.ndarray, prefix: str = "train", gz: bool = False
) -> Path:
    """``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` (``.gz`` if asked)
    holding uint8 ``x`` [N, H, W] and ``y``; returns the images file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    images = bytes((0, 0, 8, 3)) + struct.pack(">3I", *x.shape) + x.astype(np.uint8).tobytes()
    labels = bytes((0, 0, 8, 1)) + struct.pack(">I", len(y)) + y.astype(np.uint8).tobytes()
    paths = []
    for part, blob in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        path = folder / f"{prefix}-{part}{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(blob) if gz else blob)
        paths.append(path)
    return paths[0]
