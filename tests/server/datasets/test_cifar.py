"""CIFAR-10: python batches through the restricted unpickler, binary batches, NCHW out.

The hostile pickles here would run a command or build a huge array if unpickled freely; the
tests check they are refused by name before anything is resolved or run.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.datasets import CATALOG, DatasetError, cifar, dataset_info, load_split, prepare_dataset
from tests.server.datasets.files import cifar_batches, python2_batch, python_batch, write_cifar

CLASSES = CATALOG["cifar10"].class_names
BATCHES = CATALOG["cifar10"].files


def check_prepared(root: Path, expected: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    info = dataset_info(root, "cifar10")
    assert info is not None
    assert (info.train_samples, info.test_samples, info.input_shape) == (15, 3, (3, 32, 32))
    assert info.class_names == CLASSES and info.class_names[0] == "airplane"
    for split in ("train", "test"):
        x, y = load_split(root, "cifar10", split)
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 32, 32)
        assert torch.equal(x, expected[split][0]) and torch.equal(y, expected[split][1])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python_batches_are_read_as_nchw(tmp_path: Path, protocol: int) -> None:
    expected = write_cifar(tmp_path, "python", protocol)
    info = prepare_dataset(tmp_path, "cifar10", allow_download=False)
    assert info.source == "cifar-python-batches"
    assert str(tmp_path / "cifar-10-batches-py") in info.source_detail
    check_prepared(tmp_path, expected)
    # Each row is the R plane, then G, then B, each 32 rows of 32: pixel (c, h, w) of image i.
    data, _ = cifar_batches()[0]
    x, _ = load_split(tmp_path, "cifar10", "train")
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 31, 0)]:
        assert int(x[1, c, h, w]) == int(data[1, c * 1024 + h * 32 + w])


def test_batches_as_python_2_wrote_them_are_understood(tmp_path: Path) -> None:
    """The real batches were pickled by Python 2 and numpy 1: ``numpy.core.multiarray``,
    byte strings for keys, dtype and pixels."""
    expected = write_cifar(tmp_path, "python")
    for name, (data, labels) in zip(BATCHES, cifar_batches(), strict=True):
        blob = python2_batch(data, labels)
        assert b"numpy.core.multiarray" in blob and b"_codecs" not in blob
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(blob)
    prepare_dataset(tmp_path, "cifar10", allow_download=False)
    check_prepared(tmp_path, expected)


def test_binary_batches_are_read_as_nchw(tmp_path: Path) -> None:
    expected = write_cifar(tmp_path, "binary")
    info = prepare_dataset(tmp_path, "cifar10", allow_download=False)
    assert info.source == "cifar-binary-batches"
    check_prepared(tmp_path, expected)


def test_a_truncated_binary_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, "binary")
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: .* truncated"):
        prepare_dataset(tmp_path, "cifar10", allow_download=False)
    assert dataset_info(tmp_path, "cifar10") is None


def test_a_binary_label_out_of_range_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, "binary")
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(b"\x0a" + path.read_bytes()[1:])
    with pytest.raises(DatasetError, match=r"test_batch\.bin: labels must lie in 0\.\.9"):
        prepare_dataset(tmp_path, "cifar10", allow_download=False)


class RunsACommand:
    """Unpickled freely, this would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class PopensACommand(RunsACommand):
    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["touch", str(self.marker)],))


class BuildsAHugeArray:
    """An allowed name with arguments the batches never use: a terabyte array."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (cifar._RECONSTRUCT, (np.ndarray, (10**12,), b"b"))


@pytest.mark.parametrize(
    ("hostile", "refused"),
    [
        (RunsACommand, "posix.system"),
        (PopensACommand, "Popen"),  # protocol 2 maps the module to Python 2 names
        (lambda marker: eval, "__builtin__.eval"),  # so, too
        (lambda marker: BuildsAHugeArray(), "shape"),
    ],
    ids=["os.system", "Popen", "eval", "huge-array"],
)
def test_a_hostile_pickle_is_refused_without_running(
    tmp_path: Path, hostile: Any, refused: str
) -> None:
    write_cifar(tmp_path, "python")
    marker = tmp_path / "pwned"
    data, labels = cifar_batches()[0]
    batch = {b"data": data, b"labels": labels, b"payload": hostile(marker)}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=f"data_batch_2: refused to unpickle .*{refused}"):
        prepare_dataset(tmp_path, "cifar10", allow_download=False)
    assert not marker.exists()
    assert dataset_info(tmp_path, "cifar10") is None
    # The same bytes, to prove the test: a free unpickler would have run the command.
    if hostile is RunsACommand:
        pickle.loads(path.read_bytes())
        assert marker.exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([1, 2, 3], "is a dict"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "expected"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "1"]}, "list of ints"),
        ({b"labels": [0, 1]}, "uint8 array"),
    ],
)
def test_a_batch_of_the_wrong_shape_names_the_file(
    tmp_path: Path, batch: object, message: str
) -> None:
    write_cifar(tmp_path, "python")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DatasetError, match=f"test_batch: .*{message}"):
        prepare_dataset(tmp_path, "cifar10", allow_download=False)


def test_not_a_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, "python")
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="data_batch_5: not a CIFAR python batch"):
        prepare_dataset(tmp_path, "cifar10", allow_download=False)


def test_batch_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, "python")
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(DatasetError, match="data_batch_1: larger than 1000 bytes"):
        prepare_dataset(tmp_path, "cifar10", allow_download=False)


def test_the_unpickler_reads_a_real_shaped_batch_directly() -> None:
    data, labels = cifar_batches(per_batch=10)[0]
    batch = cifar.unpickle_batch(Path("x"), python_batch(data, labels))
    assert isinstance(batch, dict) and batch[b"labels"] == labels
    assert np.array_equal(batch[b"data"], data)
