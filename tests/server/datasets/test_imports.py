"""Importing the user's own data: the request's fields, the roots, the split, and the write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from node.shared.errors import DataError
from node.shared.weights import sha256_hex
from server.datasets import (
    DatasetExists,
    ImportRequest,
    OutsideImportRoots,
    dataset_info,
    import_dataset,
    list_datasets,
    load_split,
    split_path,
    stratified_split,
)
from server.datasets import imports as imports_module
from tests.node.shared.data_files import (
    labelled_arrays,
    write_idx_pair,
    write_image_folder,
    write_npz,
)


def request(path: Path | str, dataset_id: str = "pets", **fields: Any) -> ImportRequest:
    return ImportRequest.from_body({"path": str(path), "dataset_id": dataset_id, **fields})


@pytest.fixture
def roots(tmp_path: Path) -> list[Path]:
    root = tmp_path / "imports"
    root.mkdir()
    return [root]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- the split -----------------------------------------------------------------------------------


def test_the_stratified_split_is_seeded_deterministic_and_covers_every_class() -> None:
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 2 + [3] * 1 + [5] * 3)
    train, test = stratified_split(y, 6, 0.2, seed=7)
    again = stratified_split(y, 6, 0.2, seed=7)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    other = stratified_split(y, 6, 0.2, seed=8)
    assert not torch.equal(test, other[1])  # another seed, another draw
    assert sorted(torch.cat([train, test]).tolist()) == list(range(len(y)))  # each sample once
    test_counts = torch.bincount(y[test], minlength=6).tolist()
    train_counts = torch.bincount(y[train], minlength=6).tolist()
    # floor(n x 0.2), at least one and at most n - 1 for n >= 2; a lone sample stays in train.
    assert test_counts == [2, 1, 1, 0, 0, 1]
    assert train_counts == [8, 4, 1, 1, 0, 2]
    assert y[train][:8].tolist() != sorted(y[train][:8].tolist())  # shuffled, not by class


def test_the_offline_subset_keeps_one_in_five_per_class() -> None:
    y = torch.arange(5000) % 10
    train, test = stratified_split(y, 10, 1 / 5, seed=0)
    assert torch.bincount(y[test]).tolist() == [100] * 10
    assert torch.bincount(y[train]).tolist() == [400] * 10


# -- the roots -----------------------------------------------------------------------------------


def test_a_path_outside_the_roots_is_refused_naming_the_setting(
    tmp_path: Path, roots: list[Path]
) -> None:
    outside = write_image_folder(tmp_path / "elsewhere", {"a": 2, "b": 2})
    with pytest.raises(OutsideImportRoots, match=rf"^path: {outside} is outside the import roots "):
        imports_module.resolve_in_roots(str(outside), roots)
    with pytest.raises(OutsideImportRoots, match=rf"\(FEDAVG_IMPORT_ROOTS={roots[0]}\)"):
        imports_module.resolve_in_roots(str(outside), roots)
    # ".." cannot climb out, even to a folder that exists.
    with pytest.raises(OutsideImportRoots, match="outside the import roots"):
        imports_module.resolve_in_roots(f"{roots[0]}/../elsewhere", roots)
    with pytest.raises(DataError, match="is not absolute"):
        imports_module.resolve_in_roots("imports/pets", roots)


def test_a_link_inside_a_root_cannot_lead_out(tmp_path: Path, roots: list[Path]) -> None:
    outside = write_image_folder(tmp_path / "elsewhere", {"a": 2, "b": 2})
    os.symlink(outside, roots[0] / "escape")
    with pytest.raises(OutsideImportRoots, match=rf"resolves to {outside}, outside the import"):
        imports_module.resolve_in_roots(str(roots[0] / "escape"), roots)
    inside = write_image_folder(roots[0] / "real", {"a": 2, "b": 2})
    os.symlink(inside, roots[0] / "alias")
    assert imports_module.resolve_in_roots(str(roots[0] / "alias"), roots) == inside.resolve()


def test_a_root_that_is_itself_a_link_still_holds_its_files(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "imports"
    data = write_image_folder(real / "pets", {"a": 2, "b": 2})
    os.symlink(real, tmp_path / "linked")
    path = tmp_path / "linked" / "pets"
    assert imports_module.resolve_in_roots(str(path), [tmp_path / "linked"]) == data.resolve()


def test_a_missing_path_inside_the_roots_is_a_bad_request(roots: list[Path]) -> None:
    with pytest.raises(DataError, match=rf"^path: {roots[0]}/nothing does not exist$") as caught:
        imports_module.resolve_in_roots(str(roots[0] / "nothing"), roots)
    assert not isinstance(caught.value, OutsideImportRoots)


# -- the request ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset_id": "pets"}, "path"),
        ({"path": "rel/ative", "dataset_id": "pets"}, "path"),
        ({"path": "/a\0b", "dataset_id": "pets"}, "path"),
        ({"path": "/a"}, "dataset_id"),
        ({"path": "/a", "dataset_id": "Pets"}, "dataset_id"),
        ({"path": "/a", "dataset_id": "mnist"}, "dataset_id"),  # a catalogue id
        ({"path": "/a", "dataset_id": "pets", "test_fraction": 1}, "test_fraction"),
        ({"path": "/a", "dataset_id": "pets", "test_fraction": 0}, "test_fraction"),
        ({"path": "/a", "dataset_id": "pets", "test_fraction": True}, "test_fraction"),
        ({"path": "/a", "dataset_id": "pets", "seed": -1}, "seed"),
        ({"path": "/a", "dataset_id": "pets", "seed": 2**32}, "seed"),
        ({"path": "/a", "dataset_id": "pets", "class_names": "ab"}, "class_names"),
        ({"path": "/a", "dataset_id": "pets", "class_names": [1, 2]}, "class_names"),
        ({"path": "/a", "dataset_id": "pets", "size": [32]}, "size"),
        ({"path": "/a", "dataset_id": "pets", "size": [32, 3.5]}, "size"),
        ({"path": "/a", "dataset_id": "pets", "force": "yes"}, "force"),
        ({"path": "/a", "dataset_id": "pets", "pth": "/b"}, "'pth'"),
    ],
)
def test_each_bad_field_is_refused_by_name(body: dict[str, Any], field: str) -> None:
    with pytest.raises(DataError, match=f"^{field}: "):
        ImportRequest.from_body(body)


def test_the_defaults_of_a_request() -> None:
    parsed = ImportRequest.from_body({"path": "/a/b", "dataset_id": "pets"})
    assert (parsed.test_fraction, parsed.seed, parsed.force) == (0.2, 0, False)
    assert parsed.class_names is None and parsed.size is None
    with pytest.raises(DataError, match=r"^body: a JSON object is required"):
        ImportRequest.from_body(None)


# -- the import ----------------------------------------------------------------------------------


def test_an_image_folder_is_imported_like_a_catalogue_dataset(
    tmp_path: Path, roots: list[Path]
) -> None:
    folder = write_image_folder(roots[0] / "pets", {"cat": 10, "dog": 5, "eel": 2})
    datasets = tmp_path / "datasets"
    reports: list[tuple[str, int, int]] = []
    info = import_dataset(
        datasets, request(folder, seed=3), roots, progress=lambda *r: reports.append(r)
    )
    assert (info.dataset_id, info.source) == ("pets", "import")
    assert str(folder.resolve()) in info.source_detail and "image-folder" in info.source_detail
    assert "seed 3" in info.source_detail
    assert info.class_names == ("cat", "dog", "eel") and info.num_classes == 3
    assert info.input_shape == (3, 6, 8)
    assert (info.train_samples, info.test_samples) == (13, 4)
    for split, digest in (("train", info.train_sha256), ("test", info.test_sha256)):
        assert sha256_hex(split_path(datasets, "pets", split).read_bytes()) == digest
    _, train_y = load_split(datasets, "pets", "train")
    _, test_y = load_split(datasets, "pets", "test")
    assert set(train_y.tolist()) == set(test_y.tolist()) == {0, 1, 2}
    assert dataset_info(datasets, "pets") == info == list_datasets(datasets)[0]
    assert reports[0][0] == "read" and reports[-1] == ("write", 2, 2)
    # The same files and seed give the same splits, byte for byte.
    again = import_dataset(tmp_path / "again", request(folder, seed=3), roots)
    assert (again.train_sha256, again.test_sha256) == (info.train_sha256, info.test_sha256)


def test_an_array_file_is_imported_with_its_class_names(tmp_path: Path, roots: list[Path]) -> None:
    x, y = labelled_arrays(20, (4, 4, 3), classes=2)
    path = write_npz(roots[0] / "set.npz", x=x, y=y)
    info = import_dataset(
        tmp_path / "datasets", request(path, "set", class_names=["no", "yes"]), roots
    )
    assert info.class_names == ("no", "yes") and info.input_shape == (3, 4, 4)
    assert "npz" in info.source_detail and str(path) in info.source_detail
    train_x, train_y = load_split(tmp_path / "datasets", "set", "train")
    test_x, test_y = load_split(tmp_path / "datasets", "set", "test")
    rebuilt = {
        (bytes(xi.permute(1, 2, 0).numpy()), int(yi))
        for xi, yi in zip(torch.cat([train_x, test_x]), torch.cat([train_y, test_y]), strict=True)
    }
    assert rebuilt == {(bytes(xi), int(yi)) for xi, yi in zip(x, y, strict=True)}


def test_an_idx_pair_is_imported_from_its_images_file(tmp_path: Path, roots: list[Path]) -> None:
    x, y = labelled_arrays(30, (28, 28), classes=3)
    images = write_idx_pair(roots[0] / "digits", x, y, gz=True)
    info = import_dataset(tmp_path / "datasets", request(images, "digits"), roots)
    assert info.input_shape == (1, 28, 28) and info.class_names == ("0", "1", "2")
    assert "idx" in info.source_detail and info.train_samples + info.test_samples == 30


def test_a_class_with_one_sample_is_refused(tmp_path: Path, roots: list[Path]) -> None:
    folder = write_image_folder(roots[0] / "pets", {"cat": 3, "dog": 1})
    with pytest.raises(DataError, match=r"^classes: class 'dog' has 1 sample; .* at least 2"):
        import_dataset(tmp_path / "datasets", request(folder), roots)
    assert not (tmp_path / "datasets").exists()


def test_nothing_is_written_when_reading_fails(tmp_path: Path, roots: list[Path]) -> None:
    folder = write_image_folder(roots[0] / "pets", {"cat": 3, "dog": 3})
    datasets = tmp_path / "datasets"
    (folder / "dog" / "9.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"pets/dog/9\.png: not a PNG or JPEG"):
        import_dataset(datasets, request(folder), roots)
    assert not (datasets / "pets").exists()

    (folder / "dog" / "9.png").unlink()
    first = import_dataset(datasets, request(folder), roots)
    before = files_of(datasets / "pets")
    (folder / "dog" / "9.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"pets/dog/9\.png"):
        import_dataset(datasets, request(folder, force=True), roots)
    assert files_of(datasets / "pets") == before  # the old dataset, as it was
    assert dataset_info(datasets, "pets") == first


def test_a_write_that_fails_leaves_no_folder_for_a_new_id(
    tmp_path: Path, roots: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_image_folder(roots[0] / "pets", {"cat": 3, "dog": 3})

    def half_written(datasets_dir: Path, *args: Any) -> None:
        (datasets_dir / "pets").mkdir(parents=True)
        (datasets_dir / "pets" / "train.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imports_module, "write_splits", half_written)
    with pytest.raises(OSError, match="No space left"):
        import_dataset(tmp_path / "datasets", request(folder), roots)
    assert not (tmp_path / "datasets" / "pets").exists()


def test_an_imported_id_is_replaced_only_with_force(tmp_path: Path, roots: list[Path]) -> None:
    datasets = tmp_path / "datasets"
    old = write_image_folder(roots[0] / "old", {"a": 2, "b": 2})
    new = write_image_folder(roots[0] / "new", {"a": 3, "b": 3, "c": 3}, mode="L")
    first = import_dataset(datasets, request(old), roots)
    with pytest.raises(DatasetExists, match=r"^dataset_id: 'pets' is already imported .*\"force\""):
        import_dataset(datasets, request(new), roots)
    assert dataset_info(datasets, "pets") == first
    replaced = import_dataset(datasets, request(new, force=True), roots)
    assert replaced.class_names == ("a", "b", "c") and replaced.input_shape == (1, 6, 8)
    (datasets / "pets" / "info.json").write_text("{broken")  # still somebody's dataset
    with pytest.raises(DatasetExists, match=r"info\.json is unreadable"):
        import_dataset(datasets, request(old), roots)


def test_a_leftover_folder_without_info_is_not_a_dataset(tmp_path: Path, roots: list[Path]) -> None:
    (tmp_path / "datasets" / "pets").mkdir(parents=True)
    (tmp_path / "datasets" / "pets" / "train.safetensors").write_bytes(b"from a crash")
    folder = write_image_folder(roots[0] / "pets", {"a": 2, "b": 2})
    info = import_dataset(tmp_path / "datasets", request(folder), roots)
    assert info.train_samples + info.test_samples == 4
    assert np.asarray(load_split(tmp_path / "datasets", "pets", "train")[0]).dtype == np.uint8
