"""The local-data readers on files the tests write: image folders, .npz, .safetensors, IDX."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from node.shared.errors import DataError
from node.shared.local_data import (
    DEFAULT_LIMITS,
    IDX,
    IMAGE_FOLDER,
    NPZ,
    SAFETENSORS,
    read_local_data,
)
from tests.node.shared.data_files import (
    labelled_arrays,
    png_header_only,
    write_idx_pair,
    write_image,
    write_image_folder,
    write_npz,
    write_safetensors,
)

# -- image folders -------------------------------------------------------------------------------


def test_an_image_folder_is_n_c_h_w_with_the_sorted_folder_names_as_classes(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    dog = write_image(root / "dog" / "a.png", (6, 8), seed=1)
    cat = write_image(root / "cat" / "b.png", (6, 8), seed=2)
    write_image(root / "cat" / "c.jpg", (6, 8), seed=3)
    data = read_local_data(root)
    assert data.data_format == IMAGE_FOLDER
    assert data.class_names == ("cat", "dog")
    assert data.x.dtype == torch.uint8 and data.y.dtype == torch.int64
    assert tuple(data.x.shape) == (3, 3, 6, 8)
    assert data.y.tolist() == [0, 0, 1]  # cat/b.png, cat/c.jpg, dog/a.png
    assert torch.equal(data.x[0], torch.from_numpy(cat).permute(2, 0, 1))  # PNG: exact
    assert torch.equal(data.x[2], torch.from_numpy(dog).permute(2, 0, 1))
    assert data.detail == "RGB 6x8"


def test_an_all_greyscale_folder_has_one_channel(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    grey = write_image(root / "0" / "a.png", (5, 5), "L")
    write_image(root / "1" / "b.jpg", (5, 5), "L")
    write_image(root / "1" / "c.png", (5, 5), "LA")  # alpha is dropped
    Image.new("1", (5, 5), 1).save(root / "0" / "d.png")
    data = read_local_data(root)
    assert tuple(data.x.shape) == (4, 1, 5, 5)
    assert torch.equal(data.x[0, 0], torch.from_numpy(grey[..., 0]))
    assert int(data.x[1].min()) == 255  # mode "1": white is 255
    assert data.detail.startswith("L ")


def test_one_colour_image_makes_the_folder_rgb(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    grey = write_image(root / "a" / "0.png", (4, 4), "L")
    write_image(root / "b" / "0.png", (4, 4), "RGBA")
    Image.new("P", (4, 4), 3).save(root / "b" / "1.png")
    data = read_local_data(root)
    assert tuple(data.x.shape) == (3, 3, 4, 4)
    for channel in range(3):  # the greyscale image is repeated in each channel
        assert torch.equal(data.x[0, channel], torch.from_numpy(grey[..., 0]))


def test_hidden_entries_and_files_beside_the_class_folders_are_skipped(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "set", {"a": 2, "b": 2})
    (root / "README.txt").write_text("not a class")
    (root / ".cache").mkdir()
    (root / "a" / ".DS_Store").write_bytes(b"\0junk")
    data = read_local_data(root)
    assert data.class_names == ("a", "b") and len(data.y) == 4


def test_different_sizes_are_refused_unless_a_size_is_given(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    write_image(root / "a" / "0.png", (6, 8))
    write_image(root / "b" / "0.png", (12, 10))
    with pytest.raises(DataError, match=r"sizes/b/0\.png: 12x10 pixels, but sizes/a/0\.png is 6x8"):
        read_local_data(root)
    data = read_local_data(root, size=(6, 8))
    assert tuple(data.x.shape) == (2, 3, 6, 8)
    assert data.detail == "RGB 6x8, 1 resized"
    with pytest.raises(DataError, match=r"size: 6x5000 pixels .* each side must be 1\.\.4096"):
        read_local_data(root, size=(6, 5000))


def test_a_file_that_is_not_a_png_or_jpeg_is_refused_naming_it(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    (root / "cat" / "3.png").write_bytes(b"this is no image")
    with pytest.raises(
        DataError,
        match=r"^images/cat/3\.png: not a PNG or JPEG image \(cannot identify image file\)$",
    ):
        read_local_data(root)
    (root / "cat" / "3.png").unlink()
    Image.new("RGB", (6, 8)).save(root / "cat" / "3.gif")  # a real image, but not PNG or JPEG
    with pytest.raises(DataError, match=r"images/cat/3\.gif: not a PNG or JPEG"):
        read_local_data(root)


def test_a_truncated_png_is_refused_naming_it(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(40, 40))
    whole = (root / "dog" / "1.png").read_bytes()
    (root / "dog" / "1.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"^images/dog/1\.png: "):
        read_local_data(root)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (20000, 20000, "decompression bomb"),  # Pillow's own check, as the file is opened
        (10000, 10000, "decompression bomb|each side must be"),  # a warning, or ours
        (5000, 8, r"8x5000 pixels \(height x width\); each side must be 1\.\.4096"),
    ],
)
def test_a_huge_image_is_refused_from_its_header(
    tmp_path: Path, width: int, height: int, message: str
) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 2, "b": 2})
    (root / "b" / "huge.png").write_bytes(png_header_only(width, height))
    # Its pixel data is garbage: decoding would fail with another message.
    with pytest.raises(DataError, match=rf"^images/b/huge\.png: .*({message})"):
        read_local_data(root)


def test_each_limit_is_refused_naming_the_file_or_the_setting(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 3, "b": 3, "c": 2})
    size = (root / "a" / "0.png").stat().st_size
    named = replace(DEFAULT_LIMITS, bytes_setting="THE_BYTES", samples_setting="THE_COUNT")
    with pytest.raises(
        DataError, match=r"images/a/0\.png: .* bytes, over the limit of .* per image"
    ):
        read_local_data(root, replace(named, max_file_bytes=size - 1))
    with pytest.raises(DataError, match=r"images: the images hold over 100 bytes \(THE_BYTES\)"):
        read_local_data(root, replace(named, max_bytes=100))
    with pytest.raises(DataError, match=r"images: over 7 images \(THE_COUNT\)"):
        read_local_data(root, replace(named, max_samples=7))
    with pytest.raises(DataError, match=r"classes: 3 class folders, over the limit of 2"):
        read_local_data(root, replace(named, max_classes=2))
    with pytest.raises(DataError, match=r"images/a/0\.png: 6x8 pixels .* 1\.\.7"):
        read_local_data(root, replace(named, max_side=7))
    assert len(read_local_data(root, replace(named, max_samples=8)).y) == 8


def test_the_decoded_pixels_are_bounded_not_only_the_files(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(2):  # one colour each: a PNG of ~100 bytes decodes to 4,800
            Image.new("RGB", (40, 40), (k * 100, i * 100, 7)).save(root / name / f"{i}.png")
    assert sum(p.stat().st_size for p in root.rglob("*.png")) < 1000
    limits = replace(DEFAULT_LIMITS, max_bytes=10_000, bytes_setting="THE_BYTES")
    with pytest.raises(DataError, match=r"flat: 4 samples of 3x40x40 are over 10,000 bytes"):
        read_local_data(root, limits)
    assert len(read_local_data(root, replace(limits, max_bytes=19_200)).y) == 4


def test_links_and_nested_folders_in_an_image_folder_are_refused(tmp_path: Path) -> None:
    outside = write_image(tmp_path / "secret.png", (6, 8))
    assert outside.size
    root = write_image_folder(tmp_path / "images", {"a": 2, "b": 2})
    os.symlink(tmp_path / "secret.png", root / "a" / "link.png")
    with pytest.raises(DataError, match=r"images/a/link\.png: a symbolic link"):
        read_local_data(root)
    (root / "a" / "link.png").unlink()
    os.symlink(tmp_path, root / "c")
    with pytest.raises(DataError, match=r"images/c: a symbolic link"):
        read_local_data(root)
    (root / "c").unlink()
    (root / "b" / "deeper").mkdir()
    with pytest.raises(DataError, match=r"images/b/deeper: not a file"):
        read_local_data(root)


def test_one_class_only_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"cat": 3})
    with pytest.raises(
        DataError, match=r"^classes: only one class \('cat'\); a classifier needs at least 2$"
    ):
        read_local_data(root)
    (root / "dog").mkdir()  # a class with no images is allowed, but still only one has samples
    with pytest.raises(DataError, match=r"only one class \('cat'\)"):
        read_local_data(root)
    write_image(root / "dog" / "0.png", (6, 8))
    assert read_local_data(root).class_names == ("cat", "dog")


def test_an_empty_folder_and_class_names_for_a_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no class folders"):
        read_local_data(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DataError, match="empty: no samples"):
        read_local_data(tmp_path / "empty")
    root = write_image_folder(tmp_path / "images", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"^class_names: an image folder's classes"):
        read_local_data(root, class_names=["x", "y"])


def test_progress_covers_headers_then_pixels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 2, "b": 1})
    reports: list[tuple[str, int, int]] = []
    read_local_data(root, progress=lambda *r: reports.append(r))
    assert reports == [("read", i, 6) for i in range(1, 7)]


# -- array files ---------------------------------------------------------------------------------


def test_npz_n_h_w_is_one_channel_and_n_h_w_c_is_channels_first(tmp_path: Path) -> None:
    x, y = labelled_arrays(9, (5, 4))
    data = read_local_data(write_npz(tmp_path / "grey.npz", x=x, y=y))
    assert data.data_format == NPZ and data.detail == "1x5x4"
    assert tuple(data.x.shape) == (9, 1, 5, 4) and torch.equal(data.x[:, 0], torch.from_numpy(x))
    assert data.y.dtype == torch.int64 and data.y.tolist() == y.tolist()
    assert data.class_names == ("0", "1", "2")

    x3, _ = labelled_arrays(9, (5, 4, 3))
    data = read_local_data(
        write_npz(tmp_path / "rgb.npz", compressed=True, x=x3, y=y.astype(np.int16))
    )
    assert tuple(data.x.shape) == (9, 3, 5, 4) and data.x.is_contiguous()
    assert int(data.x[2, 1, 3, 0]) == int(x3[2, 3, 0, 1])  # x[n, c, h, w] == array[n, h, w, c]


def test_safetensors_reads_like_npz_and_other_tensors_are_ignored(tmp_path: Path) -> None:
    x, y = labelled_arrays(8, (4, 4, 3), classes=2)
    path = write_safetensors(
        tmp_path / "set.safetensors",
        x=torch.from_numpy(x),
        y=torch.from_numpy(y).to(torch.int32),
        mean=torch.zeros(3),
    )
    data = read_local_data(path, class_names=["no", "yes"])
    assert data.data_format == SAFETENSORS and data.class_names == ("no", "yes")
    assert tuple(data.x.shape) == (8, 3, 4, 4)
    assert torch.equal(data.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert data.y.dtype == torch.int64 and data.y.tolist() == y.tolist()


def test_labels_may_skip_a_class_but_not_leave_the_range(tmp_path: Path) -> None:
    x, _ = labelled_arrays(6)
    y = np.array([0, 2, 0, 2, 0, 2])  # no label 1: fine, "1" is a class without samples
    assert read_local_data(write_npz(tmp_path / "a.npz", x=x, y=y)).class_names == ("0", "1", "2")
    with pytest.raises(
        DataError, match=r"a\.npz: y: label 2 is outside 0\.\.1 \(class_names names 2"
    ):
        read_local_data(tmp_path / "a.npz", class_names=["a", "b"])
    write_npz(tmp_path / "b.npz", x=x, y=np.array([0, 1, -1, 0, 1, 0]))
    with pytest.raises(DataError, match=r"b\.npz: y: label -1 is outside"):
        read_local_data(tmp_path / "b.npz")
    write_npz(tmp_path / "c.npz", x=x, y=np.full(6, 4))
    with pytest.raises(DataError, match=r"classes: only one class \('4'\)"):
        read_local_data(tmp_path / "c.npz")
    write_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1, 5000, 0, 1, 0]))
    with pytest.raises(DataError, match=r"d\.npz: y: label 5000 makes 5,001 classes, over .* 1000"):
        read_local_data(tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["only"], "1 names; give 2..1000"),
        (["a", "a"], "must be different"),
        (["a", ""], "'' is not a name"),
        (["a", "b\n"], "is not a name"),
    ],
)
def test_bad_class_names_are_refused(tmp_path: Path, names: list[str], message: str) -> None:
    x, y = labelled_arrays(6, classes=2)
    with pytest.raises(DataError, match=f"^class_names: .*{message}"):
        read_local_data(write_npz(tmp_path / "a.npz", x=x, y=y), class_names=names)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((4, 5, 5), np.float32), np.arange(4) % 2, "x: dtype float32, expected uint8"),
        (np.zeros((4, 5, 5), np.uint8), np.array([0.0, 1, 0, 1]), "y: dtype float.*integer"),
        (np.zeros((4, 5, 5), np.uint8), np.arange(3) % 2, "x holds 4 samples but y has shape"),
        (np.zeros((4, 3, 5, 5), np.uint8), np.arange(4) % 2, r"x: shape \[4, 3, 5, 5\] is neither"),
        (np.zeros((4, 5), np.uint8), np.arange(4) % 2, "is neither NxHxW"),
        (np.zeros((0, 5, 5), np.uint8), np.zeros(0, np.int64), "no samples"),
    ],
)
def test_arrays_are_checked_field_by_field(
    tmp_path: Path, suffix: str, x: np.ndarray, y: np.ndarray, message: str
) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        write_npz(path, x=x, y=y)
    else:
        write_safetensors(path, x=torch.from_numpy(x), y=torch.from_numpy(y))
    with pytest.raises(DataError, match=rf"^data{suffix}: .*{message}"):
        read_local_data(path)


def test_missing_arrays_pickles_and_broken_files_are_refused(tmp_path: Path) -> None:
    x, y = labelled_arrays(4)
    with pytest.raises(DataError, match=r"a\.npz: y: missing \(the file holds \['x\.npy'\]\)"):
        read_local_data(write_npz(tmp_path / "a.npz", x=x))
    objects = np.array([{"p": 1}] * 4, dtype=object)
    with pytest.raises(DataError, match=r"b\.npz: cannot read x and y \(.*allow_pickle"):
        read_local_data(write_npz(tmp_path / "b.npz", x=objects, y=y))
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"c\.npz: not a \.npz file"):
        read_local_data(tmp_path / "c.npz")
    (tmp_path / "d.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{broken}")
    with pytest.raises(DataError, match=r"d\.safetensors: not a valid safetensors file"):
        read_local_data(tmp_path / "d.safetensors")
    with pytest.raises(DataError, match=r"e\.safetensors: y: missing"):
        read_local_data(write_safetensors(tmp_path / "e.safetensors", x=torch.from_numpy(x)))


def test_array_sizes_are_bounded_before_anything_is_inflated(tmp_path: Path) -> None:
    x = np.zeros((1000, 32, 32), np.uint8)  # 1 MB of zeros: a zip of a few KB
    path = write_npz(tmp_path / "bomb.npz", compressed=True, x=x, y=np.arange(1000) % 2)
    assert path.stat().st_size < 20_000
    limits = replace(DEFAULT_LIMITS, max_bytes=100_000, bytes_setting="THE_BYTES")
    with pytest.raises(
        DataError, match=r"bomb\.npz: x and y hold over 100,000 bytes \(THE_BYTES\)"
    ):
        read_local_data(path, limits)
    with pytest.raises(DataError, match=r"bomb\.npz: 1,000 samples, over 999 \(max_samples\)"):
        read_local_data(path, replace(DEFAULT_LIMITS, max_samples=999))
    big = write_safetensors(
        tmp_path / "big.safetensors", x=torch.from_numpy(x), y=torch.zeros(1000, dtype=torch.int64)
    )
    with pytest.raises(DataError, match=r"big\.safetensors: .* bytes, over the limit of 100,000"):
        read_local_data(big, limits)
    wide = np.zeros((2, 4, 1100, 1100), np.uint8).transpose(0, 2, 3, 1)  # 4.8 M values a sample
    with pytest.raises(DataError, match=r"wide\.npz: samples of 4x1100x1100 hold over 1,048,576"):
        read_local_data(write_npz(tmp_path / "wide.npz", x=wide, y=np.array([0, 1])))


def test_unknown_formats_and_misplaced_fields_are_refused(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(
        DataError, match=r"^path: data\.csv is not an image folder, a \.safetensors"
    ):
        read_local_data(tmp_path / "data.csv")
    x, y = labelled_arrays(4, classes=2)
    path = write_npz(tmp_path / "a.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"^size: resizing is for image folders"):
        read_local_data(path, size=(4, 4))


# -- IDX pairs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_pair_is_read_from_its_images_file_and_the_labels_beside_it(
    tmp_path: Path, gz: bool
) -> None:
    x, y = labelled_arrays(12, (7, 5), classes=4)
    images = write_idx_pair(tmp_path / "digits", x, y, gz=gz)
    data = read_local_data(images)
    assert data.data_format == IDX and data.class_names == ("0", "1", "2", "3")
    assert torch.equal(data.x, torch.from_numpy(x).unsqueeze(1)) and data.x.shape == (12, 1, 7, 5)
    assert data.y.tolist() == y.tolist()


def test_an_idx_pair_with_a_gzipped_labels_file_beside_a_plain_images_file(tmp_path: Path) -> None:
    x, y = labelled_arrays(6, classes=2)
    images = write_idx_pair(tmp_path, x, y)
    labels = tmp_path / "train-labels-idx1-ubyte"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels.read_bytes()))
    labels.unlink()
    assert read_local_data(images).y.tolist() == y.tolist()


def test_idx_pairs_that_do_not_fit_are_refused_by_name(tmp_path: Path) -> None:
    x, y = labelled_arrays(6, classes=2)
    images = write_idx_pair(tmp_path / "a", x, y)
    (tmp_path / "a" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataError, match=r"labels file train-labels-idx1-ubyte \(or .gz\) is not beside"
    ):
        read_local_data(images)
    short = write_idx_pair(tmp_path / "b", x, y[:5])
    with pytest.raises(DataError, match="5 labels for 6 images"):
        read_local_data(short)
    broken = write_idx_pair(tmp_path / "c", x, y)
    broken.write_bytes(broken.read_bytes()[:-1])
    with pytest.raises(DataError, match="need 120 data bytes, file has 119"):
        read_local_data(broken)
    wrong = write_idx_pair(tmp_path / "d", x, np.array([0, 1, 2, 0, 1, 9]))
    with pytest.raises(DataError, match="label"):
        read_local_data(wrong, class_names=("a", "b", "c"))
    zeros = np.zeros((200, 5, 4), dtype=np.uint8)  # 4,016 bytes gzipped to a few dozen
    bomb = write_idx_pair(tmp_path / "e", zeros, np.arange(200) % 2, gz=True)
    with pytest.raises(DataError, match="larger than 1000 bytes"):
        read_local_data(bomb, replace(DEFAULT_LIMITS, max_bytes=1000))


def test_a_linked_labels_file_is_refused(tmp_path: Path) -> None:
    """The server checks the images path against its import roots; the labels file beside
    it must not lead elsewhere."""
    x, y = labelled_arrays(6, classes=2)
    elsewhere = write_idx_pair(tmp_path / "elsewhere", x, y)
    images = tmp_path / "inside" / "train-images-idx3-ubyte"
    images.parent.mkdir()
    images.write_bytes(elsewhere.read_bytes())
    os.symlink(
        tmp_path / "elsewhere" / "train-labels-idx1-ubyte",
        images.parent / "train-labels-idx1-ubyte",
    )
    with pytest.raises(DataError, match="is not beside it"):
        read_local_data(images)
