"""Prepared datasets on disk: ids, info.json (old ones too), the splits and crash safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from node.shared.atomic import atomic_write_bytes as real_write
from node.shared.shards import encode_xy
from node.shared.weights import sha256_hex
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
    store,
)
from tests.server.datasets.files import synthetic, write_cifar, write_entry_idx, write_idx_set


def test_nothing_is_prepared_at_first(tmp_path: Path) -> None:
    assert dataset_info(tmp_path, "mnist") is None
    assert list_datasets(tmp_path) == []
    assert list_datasets(tmp_path / "missing") == []
    with pytest.raises(UnknownDataset, match="not prepared"):
        load_split(tmp_path, "mnist", "train")


BAD_IDS = ["../x", "MNIST", "a/b", "", "mnist\n", ".hidden", "-x", "x" * 65, "a\\b", "é"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_dataset_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnknownDataset, match="invalid dataset id"):
        dataset_info(tmp_path, bad)
    with pytest.raises(UnknownDataset):
        load_split(tmp_path, bad, "train")
    with pytest.raises(UnknownDataset):
        split_path(tmp_path, bad, "train")
    with pytest.raises(UnknownDataset, match="unknown dataset"):
        prepare_dataset(tmp_path, bad, allow_download=False)


def test_split_names_are_checked(tmp_path: Path) -> None:
    assert split_path(tmp_path, "mnist", "test") == tmp_path / "mnist" / "test.safetensors"
    with pytest.raises(DatasetError, match="unknown split"):
        split_path(tmp_path, "mnist", "../info")


def test_list_datasets_skips_foreign_and_damaged_folders(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST" / "raw")
    write_cifar(tmp_path, "python")  # cifar-10-batches-py: an id-shaped folder, no info
    mnist = prepare_mnist(tmp_path, allow_download=False)
    cifar = prepare_dataset(tmp_path, "cifar10", allow_download=False)
    (tmp_path / "notes.txt").write_text("not a dataset")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "info.json").write_text("{not json")
    with capture_logs() as logs:
        assert list_datasets(tmp_path) == [cifar, mnist]
    assert [e["dataset"] for e in logs if e["event"] == "dataset_info_unreadable"] == ["broken"]
    assert [d.input_shape for d in list_datasets(tmp_path)] == [(3, 32, 32), (1, 28, 28)]


def test_info_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing the test split leaves the dataset unprepared, not half-prepared."""
    write_entry_idx(tmp_path, CATALOG["kmnist"])

    def crash_on_test_split(path: Path, data: bytes | bytearray | memoryview) -> None:
        if path.name == "test.safetensors":
            raise OSError(28, "No space left on device (test)")
        real_write(path, data)

    prepare_dataset(tmp_path, "kmnist", allow_download=False)
    monkeypatch.setattr(store, "atomic_write_bytes", crash_on_test_split)
    with pytest.raises(OSError, match="No space left"):
        prepare_dataset(tmp_path, "kmnist", allow_download=False, force=True)
    assert dataset_info(tmp_path, "kmnist") is None  # the old info went first
    assert split_path(tmp_path, "kmnist", "train").is_file()

    monkeypatch.setattr(store, "atomic_write_bytes", real_write)
    assert prepare_dataset(tmp_path, "kmnist", allow_download=False).train_samples == 20


def test_a_tampered_split_is_refused_and_prepared_again(tmp_path: Path) -> None:
    write_entry_idx(tmp_path, CATALOG["fashion-mnist"])
    first = prepare_dataset(tmp_path, "fashion-mnist", allow_download=False)
    x, y = load_split(tmp_path, "fashion-mnist", "test")
    split_path(tmp_path, "fashion-mnist", "test").write_bytes(encode_xy(x[:-1], y[:-1]))
    with pytest.raises(DatasetError, match="changed since it was prepared"):
        load_split(tmp_path, "fashion-mnist", "test")
    again = prepare_dataset(tmp_path, "fashion-mnist", allow_download=False)
    assert again.test_sha256 == first.test_sha256


def seed_style_mnist(root: Path) -> dict[str, object]:
    """MNIST as the seed prepared it: x [N, 28, 28] on disk, no class names in info.json."""
    digests = {}
    for split, n in (("train", 20), ("test", 10)):
        x, y = synthetic(n, seed=3)
        data = encode_xy(x[:, 0].contiguous(), y)
        real_write(split_path(root, "mnist", split), data)
        digests[split] = sha256_hex(data)
    info: dict[str, object] = {
        "dataset_id": "mnist",
        "source": "idx-files",
        "source_detail": "seed",
        "train_samples": 20,
        "test_samples": 10,
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "train_sha256": digests["train"],
        "test_sha256": digests["test"],
        "prepared_at": "2025-01-01T00:00:00+00:00",
    }
    (root / "mnist" / "info.json").write_text(json.dumps(info))
    return info


def test_an_mnist_prepared_by_the_seed_still_loads(tmp_path: Path) -> None:
    seed_style_mnist(tmp_path)
    info = dataset_info(tmp_path, "mnist")
    assert info is not None and info.class_names == CATALOG["mnist"].class_names
    x, y = load_split(tmp_path, "mnist", "train")
    assert tuple(x.shape) == (20, 1, 28, 28)  # the info's shape, not the file's [N, 28, 28]
    assert torch.equal(x, synthetic(20, seed=3)[0]) and y.shape == (20,)
    # And it is kept as it is: a prepare finds it intact.
    assert prepare_mnist(tmp_path, allow_download=False).source_detail == "seed"


def test_info_round_trips_and_rejects_bad_fields() -> None:
    info = DatasetInfo(
        "d", "idx-files", "d", 20, 10, 3, (1, 28, 28), "a" * 64, "b" * 64, "t", ("x", "y", "z")
    )
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data and DatasetInfo.from_dict(data) == info
    assert data["class_names"] == ["x", "y", "z"]
    for key, value in [
        ("train_samples", True),
        ("test_samples", "10"),
        ("input_shape", [1, 0]),
        ("dataset_id", "../x"),
        ("source", None),
        ("class_names", ["x", "y"]),
        ("class_names", ["x", "y", 3]),
        ("class_names", "xyz"),
        ("norm_mean", [0.1, 0.2]),  # one value, or one per channel (1 here)
        ("norm_mean", [float("nan")]),
        ("norm_std", [0.0]),
        ("norm_std", "0.3"),
    ]:
        with pytest.raises(DatasetError):
            DatasetInfo.from_dict(data | {key: value})


def test_class_names_are_optional_in_an_old_info() -> None:
    old = DatasetInfo("d", "s", "", 1, 1, 3, (1, 2, 2), "a", "b", "t").to_dict()
    assert DatasetInfo.from_dict(old).class_names == ()  # recorded as none: kept so
    del old["class_names"]
    assert DatasetInfo.from_dict(old).class_names == ()  # not catalogued: no names to give
    catalogued = old | {"dataset_id": "cifar10", "num_classes": 10}
    assert DatasetInfo.from_dict(catalogued).class_names[:2] == ("airplane", "automobile")


def test_norm_statistics_are_recorded_per_channel_and_optional_in_an_old_info() -> None:
    info = DatasetInfo(
        "d",
        "s",
        "",
        1,
        1,
        2,
        (3, 2, 2),
        "a",
        "b",
        "t",
        norm_mean=(0.1, 0.2, 0.3),
        norm_std=(1, 2, 3),
    )
    data = info.to_dict()
    assert (data["norm_mean"], data["norm_std"]) == ([0.1, 0.2, 0.3], [1, 2, 3])
    assert DatasetInfo.from_dict(data).norm_mean == (0.1, 0.2, 0.3)
    del data["norm_mean"], data["norm_std"]
    # Written before the statistics were: the seed's MNIST normalisation, as it trained then.
    assert DatasetInfo.from_dict(data).norm_mean == store.SEED_NORM[0]


def test_channel_stats_are_the_pixels_mean_and_std_per_channel() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=gen)
    x[:, 2] = 7  # a constant channel keeps a std of 1: centred, never divided by zero
    mean, std = store.channel_stats(x)
    pixels = x.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    assert mean == pytest.approx(pixels.mean(dim=1).tolist(), abs=1e-4)
    assert std[:2] == pytest.approx(pixels[:2].std(dim=1, unbiased=False).tolist(), abs=1e-4)
    assert std[2] == 1.0


def test_a_prepared_dataset_records_its_own_statistics(tmp_path: Path) -> None:
    info = prepare_mnist(tmp_path, allow_download=False)
    x, _ = load_split(tmp_path, "mnist", "train")
    assert info.norm_mean == store.channel_stats(x)[0]
    assert 0.1 < info.norm_mean[0] < 0.16 and 0.27 < info.norm_std[0] < 0.34  # MNIST-like
