"""``POST /datasets/import`` through the real app: the user's own data, and every refusal."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from node.shared.protocol import Train
from server.events import Event
from server.settings import Settings
from server.web import sockets
from server.web.app import IMPORT_BODY_MAX, create_app
from tests.node.shared.data_files import png_header_only, write_image_folder
from tests.server.web.conftest import SPEC, Client, connect, error_of

ADMIN = {"Authorization": "Bearer adm"}
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeClient:
    async def make(**changes: Any) -> Client:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "mnist_download": False,
            "model_spec": SPEC,
            "admin_token": "adm",
        }
        values.update(changes)
        client: Client = await aiohttp_client(create_app(Settings(**values)))
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The default import root, ``<FEDAVG_HOME>/imports``."""
    folder = tmp_path / "home" / "imports"
    folder.mkdir(parents=True)
    return folder


async def post_import(client: Client, headers: dict[str, str] | None = ADMIN, **body: Any) -> Any:
    return await client.post("/datasets/import", json=body, headers=headers)


async def test_an_import_is_created_then_listed(client: Client, root: Path) -> None:
    folder = write_image_folder(root / "pets", {"cat": 6, "dog": 4})
    events: list[Event] = []
    client.app[sockets.FEDERATION].bus.listen(events.append)
    resp = await post_import(client, path=str(folder), dataset_id="pets", seed=5)
    assert resp.status == 201, await resp.text()
    info = await resp.json()
    assert (info["dataset_id"], info["source"]) == ("pets", "import")
    assert str(folder.resolve()) in info["source_detail"]
    assert "image-folder" in info["source_detail"]
    assert info["class_names"] == ["cat", "dog"] and info["input_shape"] == [3, 6, 8]
    assert (info["train_samples"], info["test_samples"]) == (8, 2)
    assert len(info["train_sha256"]) == len(info["test_sha256"]) == 64
    listed = (await (await client.get("/datasets")).json())["datasets"]
    assert listed == [info]
    kinds = [e.kind for e in events]
    assert kinds[-1] == "dataset_prepared" and "dataset_progress" in kinds
    assert {"dataset": "pets", "stage": "write", "done": 2, "total": 2} in [
        e.data for e in events if e.kind == "dataset_progress"
    ]


async def test_an_import_needs_the_admin_token(client: Client, root: Path) -> None:
    folder = write_image_folder(root / "pets", {"cat": 2, "dog": 2})
    for headers in (None, {"Authorization": "Bearer nope"}):
        resp = await post_import(client, headers, path=str(folder), dataset_id="pets")
        assert (await error_of(resp, 401))["code"] == "unauthorized"
    assert (await (await client.get("/datasets")).json())["datasets"] == []


async def test_bad_data_is_a_400_naming_the_file_or_the_field(
    client: Client, root: Path, tmp_path: Path
) -> None:
    corrupt = write_image_folder(root / "corrupt", {"cat": 2, "dog": 2})
    (corrupt / "cat" / "3.png").write_bytes(b"no image")
    huge = write_image_folder(root / "huge", {"cat": 2, "dog": 2})
    (huge / "dog" / "big.png").write_bytes(png_header_only(9000, 16))
    single = write_image_folder(root / "single", {"cat": 3})
    (root / "table.csv").write_text("1,2\n")
    cases = [
        (corrupt, "corrupt/cat/3.png: not a PNG or JPEG image (cannot identify image file)"),
        (huge, "huge/dog/big.png: 16x9000 pixels (height x width); each side must be 1..4096"),
        (single, "classes: only one class ('cat'); a classifier needs at least 2"),
        (
            root / "table.csv",
            "path: table.csv is not an image folder, a .safetensors or .npz file, or an IDX",
        ),
        (root / "missing", f"path: {root}/missing does not exist"),
    ]
    for path, message in cases:
        error = await error_of(await post_import(client, path=str(path), dataset_id="mine"), 400)
        assert error["code"] == "bad_request" and message in error["message"], error
    assert not (tmp_path / "home" / "datasets" / "mine").exists()


async def test_a_path_outside_the_roots_is_forbidden(
    make_client: MakeClient, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    client = await make_client(import_roots=(allowed,))
    outside = write_image_folder(tmp_path / "home" / "imports" / "pets", {"a": 2, "b": 2})
    for path in (str(outside), f"{allowed}/../home/imports/pets"):
        error = await error_of(await post_import(client, path=path, dataset_id="pets"), 403)
        assert error["code"] == "forbidden"
        assert f"outside the import roots (FEDAVG_IMPORT_ROOTS={allowed})" in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "the body is not JSON"),
        (b"[1, 2]", 400, "the body must be a JSON object"),
        (b"", 400, "body: a JSON object is required"),
        (json.dumps({"path": "/x", "dataset_id": "mnist"}).encode(), 400, "dataset_id: 'mnist'"),
        (json.dumps({"path": "/x", "dataset_id": "a", "seed": 1.5}).encode(), 400, "seed: "),
        (json.dumps({"path": "/x", "dataset_id": "a", "extra": 1}).encode(), 400, "'extra': "),
        (b" " * (IMPORT_BODY_MAX + 1), 413, "exceeds the"),
    ],
)
async def test_a_bad_body_is_refused(
    client: Client, body: bytes, status: int, message: str
) -> None:
    headers = {**ADMIN, "Content-Type": "application/json"}
    resp = await client.post("/datasets/import", data=body, headers=headers)
    error = await error_of(resp, status)
    assert message in error["message"], error


async def test_an_imported_id_needs_force_to_be_replaced(client: Client, root: Path) -> None:
    write_image_folder(root / "v1", {"a": 2, "b": 2})
    write_image_folder(root / "v2", {"a": 3, "b": 3}, mode="L")
    assert (await post_import(client, path=str(root / "v1"), dataset_id="pets")).status == 201
    error = await error_of(await post_import(client, path=str(root / "v2"), dataset_id="pets"), 409)
    assert error["code"] == "conflict" and '"force": true' in error["message"]
    resp = await post_import(client, path=str(root / "v2"), dataset_id="pets", force=True)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["input_shape"] == [1, 6, 8]


async def test_an_imported_dataset_can_be_planned_and_trained_on(
    client: Client, root: Path
) -> None:
    write_image_folder(root / "pets", {"cat": 10, "dog": 10})
    resp = await post_import(client, path=str(root / "pets"), dataset_id="pets")
    info = await resp.json()
    node = await connect(client, "n1")
    resp = await client.post("/train/pets/prepare", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    plan = await resp.json()
    assert plan["dataset"] == "pets"
    assert [(s["node_id"], s["samples"]) for s in plan["shards"]] == [("n1", info["train_samples"])]
    resp = await client.post("/train/pets?epochs=1", headers=ADMIN)
    assert resp.status == 202, await resp.text()
    train = await node.expect(Train)
    assert (train.dataset, train.model_spec.input_shape) == ("pets", (3, 6, 8))
    assert train.model_spec.num_classes == 2
    assert (await client.post("/jobs/stop", headers=ADMIN)).status == 200
    await node.ws.close()
