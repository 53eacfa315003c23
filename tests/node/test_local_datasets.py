"""A node's own datasets: ``NAME=PATH`` parsed, read once and cached, split, announced
without a sample."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from node.local_datasets import (
    DataSpec,
    load_node_dataset,
    parse_data_specs,
)
from node.shared.errors import DataError
from node.shared.protocol import OwnData, OwnDataset, decode, encode
from tests.node.shared.data_files import (
    labelled_arrays,
    write_idx_pair,
    write_image_folder,
    write_npz,
    write_safetensors,
)


def test_name_equals_path_values_are_parsed() -> None:
    specs = parse_data_specs(["pets=/data/pets", " digits = ~/d.npz"])
    assert specs == (
        DataSpec("pets", Path("/data/pets")),
        DataSpec("digits", Path("~/d.npz").expanduser()),
    )


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["pets"], "'pets' is not NAME=PATH"),
        (["pets="], "is not NAME=PATH"),
        (["Pets=/x"], "dataset name 'Pets' must match"),
        (["../x=/x"], "must match"),
        (["a=/x", "a=/y"], "dataset 'a' is given twice"),
        ([f"d{i}=/x" for i in range(33)], "at most 32 datasets"),
    ],
)
def test_bad_values_name_the_setting(values: list[str], fragment: str) -> None:
    with pytest.raises(DataError, match=f"^NODE_DATA: .*{fragment}"):
        parse_data_specs(values, "NODE_DATA")


def test_an_image_folder_is_read_split_by_class_and_described(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "pets", {"cat": 10, "dog": 5}, size=(6, 8))
    data = load_node_dataset(DataSpec("pets", folder), tmp_path / "cache", test_split=0.2)
    assert data.schema.input_shape == (3, 6, 8) and data.schema.class_names == ("cat", "dog")
    assert torch.bincount(data.test_y).tolist() == [2, 1]  # a fifth of each class
    assert torch.bincount(data.train_y).tolist() == [8, 4]
    assert data.train_x.shape == (12, 3, 6, 8) and data.train_x.dtype == torch.uint8
    every = {bytes(x.numpy()) for x in torch.cat([data.train_x, data.test_x])}
    assert len(every) == 15  # train and test are disjoint and cover the data


def test_the_announcement_holds_no_sample_and_label_counts_only_when_allowed(
    tmp_path: Path,
) -> None:
    x, y = labelled_arrays(40, (5, 4), classes=4)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)
    data = load_node_dataset(DataSpec("d", path), tmp_path / "cache")
    said = data.announcement()
    assert said == OwnDataset(
        name="d",
        input_shape=(1, 5, 4),
        class_names=("0", "1", "2", "3"),
        train_samples=len(data.train_y),
        test_samples=len(data.test_y),
        fingerprint=data.fingerprint,
    )
    assert said.train_samples + said.test_samples == 40 and said.label_counts is None
    shared = data.announcement(share_label_counts=True)
    assert shared.label_counts is not None and len(shared.label_counts) == 4
    assert sum(shared.label_counts) == said.train_samples
    frame = decode(encode(OwnData(datasets=(shared,))))  # what travels, and back
    assert frame == OwnData(datasets=(shared,))


def test_the_fingerprint_is_the_content_whatever_the_format_or_the_name(tmp_path: Path) -> None:
    x, y = labelled_arrays(20, (6, 6), classes=2)
    cache = tmp_path / "cache"
    a = load_node_dataset(DataSpec("a", write_npz(tmp_path / "a.npz", x=x, y=y)), cache)
    tensors = {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}
    b_path = write_safetensors(tmp_path / "b.safetensors", **tensors)
    b = load_node_dataset(DataSpec("b", b_path), cache)
    c = load_node_dataset(DataSpec("c", write_idx_pair(tmp_path / "idx", x, y)), cache)
    assert a.fingerprint == b.fingerprint == c.fingerprint
    x[0, 0, 0] ^= 1
    d = load_node_dataset(DataSpec("d", write_npz(tmp_path / "d.npz", x=x, y=y)), cache)
    assert d.fingerprint != a.fingerprint


def test_the_decoded_copy_is_reused_until_the_source_changes(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "pets", {"cat": 4, "dog": 4})
    cache = tmp_path / "cache"
    first = load_node_dataset(DataSpec("pets", folder), cache)
    [cached] = (cache / "local-data").iterdir()
    written = cached.stat().st_mtime_ns
    again = load_node_dataset(DataSpec("pets", folder), cache)
    assert cached.stat().st_mtime_ns == written  # read from the cache, not rewritten
    assert again.fingerprint == first.fingerprint and torch.equal(again.train_x, first.train_x)

    image = folder / "cat" / "0.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    load_node_dataset(DataSpec("pets", folder), cache)
    assert len(list((cache / "local-data").iterdir())) == 2  # a changed source, a new key


def test_a_corrupt_cache_is_read_again_from_the_source(tmp_path: Path) -> None:
    x, y = labelled_arrays(20, classes=2)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)
    cache = tmp_path / "cache"
    first = load_node_dataset(DataSpec("d", path), cache)
    [cached] = (cache / "local-data").iterdir()
    raw = bytearray(cached.read_bytes())
    raw[-1] ^= 0xFF  # a label byte: it still parses, but not to the fingerprint it records
    cached.write_bytes(bytes(raw))
    again = load_node_dataset(DataSpec("d", path), cache)
    assert again.fingerprint == first.fingerprint and torch.equal(again.train_y, first.train_y)
    cached.write_bytes(b"not safetensors")
    assert load_node_dataset(DataSpec("d", path), cache).fingerprint == first.fingerprint


def test_errors_name_the_dataset(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"^dataset 'gone' \(.*gone\): no such file or folder"):
        load_node_dataset(DataSpec("gone", tmp_path / "gone"), cache)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"^dataset 'notes' .*is not an image folder"):
        load_node_dataset(DataSpec("notes", tmp_path / "notes.txt"), cache)
    x, y = labelled_arrays(4, classes=2)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"test_split must be within \(0, 1\)"):
        load_node_dataset(DataSpec("d", path), cache, test_split=1.0)
    one_each = write_npz(tmp_path / "one.npz", x=x[:2], y=np.array([0, 1]))
    with pytest.raises(DataError, match="leave nothing to test on"):
        load_node_dataset(DataSpec("one", one_each), cache)
