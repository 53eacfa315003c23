"""The IDX datasets (MNIST, Fashion-MNIST, KMNIST, EMNIST digits): files as torchvision leaves
them, plain or .gz, read by one reader; EMNIST comes out upright; malformed files are errors."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from server.datasets import CATALOG, DatasetError, dataset_info, load_split, prepare_dataset
from tests.server.datasets.files import (
    IDX_IDS,
    idx_bytes,
    no_network,
    write_entry_idx,
    write_idx_set,
)

MNIST_FILES = CATALOG["mnist"].files


@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4], ids=["plain", "gz"])
@pytest.mark.parametrize("dataset_id", IDX_IDS)
def test_each_idx_dataset_is_read_from_the_torchvision_layout(
    tmp_path: Path, dataset_id: str, gz: tuple[bool, bool, bool, bool]
) -> None:
    entry = CATALOG[dataset_id]
    expected = write_entry_idx(tmp_path, entry, gz=gz)
    info = prepare_dataset(tmp_path, dataset_id, allow_download=False)
    assert (info.source, info.train_samples, info.test_samples) == ("idx-files", 20, 10)
    assert (info.num_classes, info.input_shape) == (10, (1, 28, 28))
    assert info.class_names == entry.class_names and len(set(info.class_names)) == 10
    assert str(tmp_path / entry.download_folder) in info.source_detail

    on_disk = json.loads((tmp_path / dataset_id / "info.json").read_text())
    assert on_disk["class_names"] == list(entry.class_names)
    assert on_disk["input_shape"] == [1, 28, 28]
    for split in ("train", "test"):
        data = (tmp_path / dataset_id / f"{split}.safetensors").read_bytes()
        assert on_disk[f"{split}_sha256"] == hashlib.sha256(data).hexdigest()
        x, y = load_split(tmp_path, dataset_id, split)
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 28, 28)
        assert torch.equal(x, expected[split][0]) and torch.equal(y, expected[split][1])
        assert y.bincount().tolist() == [len(y) // 10] * 10


def test_fashion_class_names_are_the_garments(tmp_path: Path) -> None:
    write_entry_idx(tmp_path, CATALOG["fashion-mnist"])
    info = prepare_dataset(tmp_path, "fashion-mnist", allow_download=False)
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"


def upright_pattern() -> torch.Tensor:
    """An image that no flip or transpose maps onto itself: a left bar, a top bar, one dot."""
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[:, 2] = 255  # a vertical bar on the left
    image[3, 2:20] = 200  # a horizontal bar at the top, to the right of it
    image[24, 22] = 99  # a dot low on the right
    return image


@pytest.mark.parametrize("dataset_id", ["emnist-digits", "mnist"])
def test_emnist_is_turned_upright_and_only_emnist(tmp_path: Path, dataset_id: str) -> None:
    """EMNIST's files store each image transposed; the other IDX sets store it as it is."""
    entry = CATALOG[dataset_id]
    image = upright_pattern()
    stored = image.t() if dataset_id == "emnist-digits" else image
    folder = tmp_path / entry.download_folder
    folder.mkdir(parents=True)
    for name, blob in zip(
        entry.files,
        [
            idx_bytes(3, (1, 28, 28), stored.contiguous().numpy().tobytes()),
            idx_bytes(1, (1,), b"\x07"),
            idx_bytes(3, (1, 28, 28), stored.contiguous().numpy().tobytes()),
            idx_bytes(1, (1,), b"\x03"),
        ],
        strict=True,
    ):
        (folder / name).write_bytes(blob)
    prepare_dataset(tmp_path, dataset_id, allow_download=False)
    for split in ("train", "test"):
        x, _ = load_split(tmp_path, dataset_id, split)
        assert torch.equal(x[0, 0], image)
        assert int(x[0, 0, 3, 10]) == 200 and int(x[0, 0, 24, 22]) == 99


@pytest.mark.parametrize("dataset_id", IDX_IDS)
def test_a_second_prepare_reuses_the_first_and_force_reads_again(
    tmp_path: Path, dataset_id: str
) -> None:
    entry = CATALOG[dataset_id]
    write_entry_idx(tmp_path, entry, seed=1)
    first = prepare_dataset(tmp_path, dataset_id, allow_download=False)
    files = [tmp_path / dataset_id / n for n in ("train.safetensors", "test.safetensors")]
    files.append(tmp_path / dataset_id / "info.json")
    stats = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]

    replaced = write_entry_idx(tmp_path, entry, seed=5)  # new source files: kept out until force
    assert prepare_dataset(tmp_path, dataset_id, allow_download=False) == first
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == stats

    again = prepare_dataset(tmp_path, dataset_id, allow_download=False, force=True)
    assert again.train_sha256 != first.train_sha256
    assert torch.equal(load_split(tmp_path, dataset_id, "train")[0], replaced["train"][0])


@pytest.mark.parametrize("where", ["", "MNIST/raw", "mnist/raw"])
@pytest.mark.parametrize(
    "gz", [(False,) * 4, (True,) * 4, (True, False, False, True)], ids=["plain", "gz", "mixed"]
)
def test_mnist_idx_files_win_over_the_fallback(
    tmp_path: Path, where: str, gz: tuple[bool, bool, bool, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_network(monkeypatch)
    folder = tmp_path / where if where else tmp_path
    expected = write_idx_set(folder, MNIST_FILES, gz)
    info = prepare_dataset(tmp_path, "mnist")
    assert (info.source, info.train_samples, info.test_samples) == ("idx-files", 20, 10)
    assert str(folder) in info.source_detail
    for split in ("train", "test"):
        x, y = load_split(tmp_path, "mnist", split)
        assert torch.equal(x, expected[split][0]) and torch.equal(y, expected[split][1])


def test_the_own_folder_of_a_dataset_is_searched_too(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "kmnist" / "raw", MNIST_FILES)
    assert prepare_dataset(tmp_path, "kmnist", allow_download=False).source == "idx-files"


def test_mnist_files_are_not_taken_for_fashion_mnist(tmp_path: Path) -> None:
    """Fashion-MNIST and KMNIST share MNIST's file names: only their own folders count."""
    write_idx_set(tmp_path, MNIST_FILES)
    write_idx_set(tmp_path / "MNIST" / "raw", MNIST_FILES)
    with pytest.raises(DatasetError, match="no offline fallback"):
        prepare_dataset(tmp_path, "fashion-mnist", allow_download=False)


GOOD_LABELS = idx_bytes(1, (20,), bytes(range(10)) * 2)
MALFORMED = {
    "bad-magic": (MNIST_FILES[1], b"\x00\x00\x08\x03" + GOOD_LABELS[4:]),
    "truncated-header": (MNIST_FILES[1], b"\x00\x00\x08"),
    "short-payload": (MNIST_FILES[1], GOOD_LABELS[:-1]),
    "long-payload": (MNIST_FILES[1], GOOD_LABELS + b"\x00"),
    "label-10": (MNIST_FILES[1], idx_bytes(1, (20,), bytes([10]) * 20)),
    "count-mismatch": (MNIST_FILES[1], idx_bytes(1, (19,), bytes(19))),
    "27x28-images": (MNIST_FILES[0], idx_bytes(3, (20, 27, 28), bytes(20 * 27 * 28))),
    "float-images": (MNIST_FILES[0], b"\x00\x00\x0d\x03" + bytes(12 + 20 * 784)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_idx_is_an_error_naming_the_file(tmp_path: Path, case: str) -> None:
    write_idx_set(tmp_path)
    name, blob = MALFORMED[case]
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(DatasetError, match=name):
        prepare_dataset(tmp_path, "mnist", allow_download=False)
    assert dataset_info(tmp_path, "mnist") is None


def test_a_malformed_emnist_file_names_the_file(tmp_path: Path) -> None:
    entry = CATALOG["emnist-digits"]
    write_entry_idx(tmp_path, entry)
    (tmp_path / entry.download_folder / entry.files[3]).write_bytes(idx_bytes(1, (10,), bytes(9)))
    with pytest.raises(DatasetError, match=entry.files[3]):
        prepare_dataset(tmp_path, "emnist-digits", allow_download=False)


def test_a_corrupt_gzip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=(False, False, True, False))
    gz = tmp_path / f"{MNIST_FILES[2]}.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(DatasetError, match=f"{MNIST_FILES[2]}.gz"):
        prepare_dataset(tmp_path, "mnist", allow_download=False)


def test_a_gzip_bomb_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.datasets import idx

    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 10_000)
    write_idx_set(tmp_path / "KMNIST" / "raw", MNIST_FILES)
    bomb = tmp_path / "KMNIST" / "raw" / f"{MNIST_FILES[0]}.gz"
    (tmp_path / "KMNIST" / "raw" / MNIST_FILES[0]).unlink()
    bomb.write_bytes(gzip.compress(bytes(1_000_000)))
    with pytest.raises(DatasetError, match="larger than 10000 bytes"):
        prepare_dataset(tmp_path, "kmnist", allow_download=False)


def test_an_incomplete_set_is_skipped_with_a_warning(tmp_path: Path) -> None:
    entry = CATALOG["fashion-mnist"]
    write_entry_idx(tmp_path, entry)
    (tmp_path / entry.download_folder / entry.files[3]).unlink()
    with capture_logs() as logs, pytest.raises(DatasetError, match="no offline fallback"):
        prepare_dataset(tmp_path, "fashion-mnist", allow_download=False)
    warning = next(e for e in logs if e["event"] == "dataset_files_incomplete")
    assert (warning["dataset"], warning["missing"]) == ("fashion-mnist", [entry.files[3]])
