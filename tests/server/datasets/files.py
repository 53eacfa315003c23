"""Dataset files as torchvision leaves them, written by the tests: IDX sets and CIFAR batches."""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.datasets import CATALOG, CatalogEntry

IDX_IDS = [i for i, e in CATALOG.items() if e.layout == "idx"]
Tensors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def idx_bytes(ndim: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes((0, 0, 0x08, ndim)) + struct.pack(f">{len(dims)}I", *dims) + payload


def synthetic(n: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)) -> tuple[torch.Tensor, ...]:
    """``n`` random images, labels cycling through all ten classes (so every class appears)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n, dtype=torch.int64) % 10


def write_idx_set(
    folder: Path,
    names: tuple[str, ...] = CATALOG["mnist"].files,
    gz: tuple[bool, bool, bool, bool] = (False,) * 4,
    *,
    transposed: bool = False,
    seed: int = 1,
) -> Tensors:
    """Four small IDX files (20 train / 10 test, two of each class per split); returns the
    upright [N, 1, 28, 28] tensors they hold. ``transposed`` stores each image as EMNIST does."""
    folder.mkdir(parents=True, exist_ok=True)
    (tx, ty), (vx, vy) = synthetic(20, seed), synthetic(10, seed + 1)
    blobs = []
    for x, y in ((tx, ty), (vx, vy)):
        stored = x[:, 0].transpose(1, 2) if transposed else x[:, 0]
        blobs.append(idx_bytes(3, (len(x), 28, 28), stored.contiguous().numpy().tobytes()))
        blobs.append(idx_bytes(1, (len(y),), y.to(torch.uint8).numpy().tobytes()))
    for name, blob, zipped in zip(names, blobs, gz, strict=True):
        if zipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return {"train": (tx, ty), "test": (vx, vy)}


def write_entry_idx(root: Path, entry: CatalogEntry, **kwargs: Any) -> Tensors:
    """An entry's IDX set where torchvision's download would leave it."""
    kwargs.setdefault("transposed", entry.transposed)
    return write_idx_set(root / entry.download_folder, entry.files, **kwargs)


def cifar_batches(per_batch: int = 3) -> list[tuple[np.ndarray[Any, Any], list[int]]]:
    """Six batches (five train, one test) of ``per_batch`` images with labels 0..9."""
    rng = np.random.default_rng(7)
    batches = []
    for b in range(6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batches.append((data, [(b * per_batch + i) % 10 for i in range(per_batch)]))
    return batches


def python_batch(data: np.ndarray[Any, Any], labels: list[int], protocol: int = 2) -> bytes:
    """A batch as torchvision downloads it: a pickled dict with bytes keys."""
    batch = {b"batch_label": b"a batch", b"labels": labels, b"data": data, b"filenames": []}
    return pickle.dumps(batch, protocol=protocol)


def write_cifar(root: Path, kind: str, protocol: int = 2) -> Tensors:
    """The six batch files in ``cifar-10-batches-py`` (or ``-bin``); the NCHW tensors."""
    folder = root / ("cifar-10-batches-py" if kind == "python" else "cifar-10-batches-bin")
    folder.mkdir(parents=True, exist_ok=True)
    batches = cifar_batches()
    for name, (data, labels) in zip(CATALOG["cifar10"].files, batches, strict=True):
        if kind == "python":
            (folder / name).write_bytes(python_batch(data, labels, protocol))
        else:
            records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
    xs = [torch.from_numpy(d.reshape(-1, 3, 32, 32).copy()) for d, _ in batches]
    ys = [torch.tensor(labels, dtype=torch.int64) for _, labels in batches]
    return {"train": (torch.cat(xs[:-1]), torch.cat(ys[:-1])), "test": (xs[-1], ys[-1])}


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail every DNS look-up, as on a machine with no internet, whatever this machine has."""

    def refuse(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def python2_batch(data: np.ndarray[Any, Any], labels: list[int]) -> bytes:
    """A batch byte for byte as Python 2's cPickle and numpy 1 wrote the real files: protocol
    2, ``str`` as BINSTRING (bytes here), ``numpy.core.multiarray._reconstruct``."""

    def string(value: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(value)) + value

    n, width = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"K\x00\x85"  # (0,)
        + string(b"b")
        + b"\x87R"  # _reconstruct(ndarray, (0,), "b")
        + b"(K\x01"
        + b"M"
        + struct.pack("<H", n)
        + b"M"
        + struct.pack("<H", width)
        + b"\x86"  # (n, width)
        + b"cnumpy\ndtype\n"
        + string(b"u1")
        + b"K\x00K\x01\x87R"  # dtype("u1", 0, 1)
        + b"(K\x03"
        + string(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # the dtype's state
        + b"\x89"
        + string(data.tobytes())
        + b"tb"  # the array's state: (1, shape, dtype, False, bytes)
    )
    ints = b"".join(b"K" + bytes([v]) for v in labels)
    return (
        b"\x80\x02}("
        + string(b"data")
        + array
        + string(b"labels")
        + b"](" + ints + b"e"
        + string(b"batch_label")
        + string(b"training batch 1 of 5")
        + b"u."
    )  # fmt: skip
