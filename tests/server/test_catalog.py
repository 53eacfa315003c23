"""The saved-model catalogue over real safetensors files: listing, its cache, and lookups."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from node.shared.model import ModelSpec, init_state
from node.shared.weights import WeightsMeta, encode_tensors, encode_weights
from server.catalog import ModelCatalog
from server.errors import NotFound

SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)


def write_model(folder: Path, name: str, created: str, seed: int = 0) -> bytes:
    """A final model file as a job writes one; returns its bytes."""
    meta = WeightsMeta(spec=SPEC, round=2, job_id=name, extra={"kind": "final", "created": created})
    data = bytes(encode_weights(init_state(SPEC, seed), meta))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return data


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_no_folder_lists_nothing(folder: Path) -> None:
    assert ModelCatalog(folder).models() == []


def test_lists_newest_first_with_what_each_file_says(folder: Path) -> None:
    old = write_model(folder, "a-old.safetensors", "2024-01-01T00:00:00+00:00")
    new = write_model(folder, "z-new.safetensors", "2025-06-01T00:00:00+00:00", seed=1)
    mid = write_model(folder, "m-mid.safetensors", "2024-12-31T23:59:59+00:00", seed=2)
    (folder / "notes.txt").write_text("not a model")

    models = ModelCatalog(folder).models()

    assert [m["name"] for m in models] == [
        "z-new.safetensors",
        "m-mid.safetensors",
        "a-old.safetensors",
    ]
    by_name = {m["name"]: m for m in models}
    for name, data in (("a-old", old), ("z-new", new), ("m-mid", mid)):
        entry = by_name[f"{name}.safetensors"]
        assert entry["url"] == f"/models/{name}.safetensors"
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["metadata"]["kind"] == "final"
        assert entry["metadata"]["model_spec"] == json.loads(SPEC.to_json())  # decoded
    assert by_name["z-new.safetensors"]["created"] == "2025-06-01T00:00:00+00:00"


def test_without_a_created_stamp_the_mtime_dates_the_file(folder: Path) -> None:
    write_model(folder, "m.safetensors", "")
    os.utime(folder / "m.safetensors", (0, 86400))  # 1970-01-02, UTC

    (entry,) = ModelCatalog(folder).models()

    assert entry["created"] == "1970-01-02T00:00:00+00:00"


def test_a_replaced_file_is_read_again(folder: Path) -> None:
    catalog = ModelCatalog(folder)
    write_model(folder, "m.safetensors", "2024-01-01T00:00:00+00:00", seed=0)
    first = catalog.models()[0]["sha256"]

    data = write_model(folder, "m.safetensors", "2024-01-02T00:00:00+00:00", seed=1)
    stat = (folder / "m.safetensors").stat()
    os.utime(folder / "m.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    (entry,) = catalog.models()

    assert entry["sha256"] == hashlib.sha256(data).hexdigest() != first
    assert entry["created"] == "2024-01-02T00:00:00+00:00"


def test_an_unchanged_version_is_not_read_again(folder: Path) -> None:
    catalog = ModelCatalog(folder)
    data = write_model(folder, "m.safetensors", "2024-01-01T00:00:00+00:00")
    path = folder / "m.safetensors"
    stat = path.stat()
    catalog.models()

    # Same name, size and mtime: the cached entry stands (the catalogue never re-hashes it).
    path.write_bytes(bytes(len(data)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert catalog.models()[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_an_unreadable_file_is_skipped(folder: Path) -> None:
    write_model(folder, "good.safetensors", "2024-01-01T00:00:00+00:00")
    (folder / "truncated.safetensors").write_bytes(b"\x01")
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 64)
    bad_spec = encode_tensors(init_state(SPEC, 0), {"model_spec": "{not json"})
    (folder / "bad-spec.safetensors").write_bytes(bytes(bad_spec))
    (folder / "a-folder.safetensors").mkdir()

    catalog = ModelCatalog(folder)

    assert [m["name"] for m in catalog.models()] == ["good.safetensors"]
    assert [m["name"] for m in catalog.models()] == ["good.safetensors"]  # also from the cache


def test_a_removed_file_leaves_the_listing(folder: Path) -> None:
    catalog = ModelCatalog(folder)
    write_model(folder, "a.safetensors", "2024-01-01T00:00:00+00:00")
    write_model(folder, "b.safetensors", "2024-01-02T00:00:00+00:00")
    assert len(catalog.models()) == 2

    (folder / "b.safetensors").unlink()

    assert [m["name"] for m in catalog.models()] == ["a.safetensors"]


def test_model_path_finds_a_saved_model(folder: Path) -> None:
    write_model(folder, "m.safetensors", "2024-01-01T00:00:00+00:00")

    assert ModelCatalog(folder).model_path("m.safetensors") == folder / "m.safetensors"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "missing.safetensors",
        "m.bin",
        "m",
        ".hidden.safetensors",
        "../outside.safetensors",
        "sub/m.safetensors",
        "sub\\m.safetensors",
        "dir.safetensors",
    ],
)
def test_a_bad_name_is_not_found(folder: Path, name: str) -> None:
    write_model(folder, "m.bin", "2024-01-01T00:00:00+00:00")
    write_model(folder, ".hidden.safetensors", "2024-01-01T00:00:00+00:00")
    write_model(folder.parent, "outside.safetensors", "2024-01-01T00:00:00+00:00")
    write_model(folder / "sub", "m.safetensors", "2024-01-01T00:00:00+00:00")
    (folder / "dir.safetensors").mkdir()

    with pytest.raises(NotFound, match="no model named"):
        ModelCatalog(folder).model_path(name)


def test_a_version_seen_gone_is_forgotten(folder: Path) -> None:
    catalog = ModelCatalog(folder)
    write_model(folder, "m.safetensors", "2024-01-01T00:00:00+00:00", seed=0)
    path = folder / "m.safetensors"
    stat = path.stat()
    catalog.models()
    path.unlink()
    assert catalog.models() == []

    # Back with the same name, size and mtime: a listing in between dropped the old entry.
    data = write_model(folder, "m.safetensors", "2024-01-01T00:00:00+00:00", seed=1)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert catalog.models()[0]["sha256"] == hashlib.sha256(data).hexdigest()


def _write_with(folder: Path, name: str, extra: dict[str, str]) -> None:
    meta = WeightsMeta(spec=SPEC, round=2, job_id="j", extra=extra)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(bytes(encode_weights(init_state(SPEC, 0), meta)))


def test_a_jobs_final_and_best_models_are_listed_final_first_with_what_each_is(
    folder: Path,
) -> None:
    created = {"created": "2025-06-01T00:00:00+00:00"}
    best = {"kind": "best", "best_round": "2", "best_metric": "test_accuracy"}
    _write_with(folder, "j.best.safetensors", {**created, **best, "best_value": "0.912500"})
    _write_with(folder, "j.safetensors", {**created, "kind": "final"})
    _write_with(folder, "old.safetensors", {"created": "2024-01-01T00:00:00+00:00"})  # no kind

    listed = {m["name"]: m for m in ModelCatalog(folder).models()}

    assert list(listed) == ["j.safetensors", "j.best.safetensors", "old.safetensors"]
    assert [m["kind"] for m in listed.values()] == ["final", "best", "final"]
    entry = listed["j.best.safetensors"]
    assert (entry["best_round"], entry["best_metric"], entry["best_value"]) == (
        2,
        "test_accuracy",
        0.9125,
    )
    assert "best_round" not in listed["j.safetensors"]


def test_a_best_model_whose_round_is_not_a_number_is_not_listed(folder: Path) -> None:
    bad = {"kind": "best", "best_round": "two", "best_metric": "test_accuracy", "best_value": "1"}
    _write_with(folder, "bad.best.safetensors", bad)
    assert ModelCatalog(folder).models() == []
