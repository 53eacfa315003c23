"""Jobs over the nodes' own data through the real app: hand-made nodes announce what they
hold, the server trains over the majority's nodes with no shard, caps each upload at the
announced count, and records the nodes' evaluations of every round's model."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import torch
from safetensors.torch import load

from node.shared.protocol import (
    Done,
    Evaluate,
    Evaluation,
    OwnData,
    OwnDataset,
    Train,
    WeightsReady,
    encode,
)
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from tests.server.web.conftest import Client, FakeNode, MakeClient, connect, error_of, prepare_mnist

ADMIN = {"Authorization": "Bearer " + "t" * 32}
TRAIN = {"a": 300, "b": 100}  # announced train samples
TEST = {"a": 60, "b": 20}


def _digits(node_id: str, shape: tuple[int, ...] = (1, 28, 28)) -> OwnDataset:
    return OwnDataset(
        name="digits",
        input_shape=shape,
        class_names=tuple(str(c) for c in range(10)),
        train_samples=TRAIN.get(node_id, 50),
        test_samples=TEST.get(node_id, 10),
        fingerprint=node_id[0] * 64,
    )


async def _holder(client: Client, node_id: str, **shape: Any) -> FakeNode:
    node = await connect(client, node_id)
    await node.ws.send_str(encode(OwnData(datasets=(_digits(node_id, **shape),))))
    for _ in range(200):  # the frame is applied asynchronously
        rows = (await (await client.get("/nodes")).json())["nodes"]
        if any(r["node_id"] == node_id and r["own_data"] for r in rows):
            return node
        await asyncio.sleep(0.02)
    raise AssertionError(f"{node_id}'s own_data never showed")


async def _upload(
    client: Client,
    node: FakeNode,
    train: Train,
    round_: int,
    state: dict[str, torch.Tensor],
    samples: int,
) -> Any:
    body = encode_weights(
        state, WeightsMeta(spec=train.model_spec, round=round_, job_id=train.job_id)
    )
    params = {"job": train.job_id, "round": str(round_), "samples": str(samples)}
    return await client.post("/sync/weights", params=params, data=body, headers=node.auth)


async def _evaluated(node: FakeNode, train: Train, round_: int, correct: int, loss: float) -> None:
    reading = Evaluation(
        job_id=train.job_id, round=round_, samples=TEST[node.node_id], correct=correct, loss=loss
    )
    await node.ws.send_str(encode(reading))


def _scaled(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v * by for k, v in state.items()}


async def test_a_job_over_the_nodes_own_data(make_client: MakeClient) -> None:
    client = await make_client(admin_token="t" * 32)
    a, b = await _holder(client, "a"), await _holder(client, "b")
    odd = await _holder(client, "c", shape=(3, 28, 28))
    resp = await client.post("/train/digits?epochs=2", headers=ADMIN)
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["nodes"] == 2 and started["data_mode"] == "local"
    assert started["left_out"] == [
        {
            "node_id": "c",
            "name": "name-c",
            "why": "input_shape [3, 28, 28], not the majority's [1, 28, 28]",
        }
    ]
    trains = {n.node_id: await n.expect(Train) for n in (a, b)}
    for node_id, train in trains.items():
        assert (train.data_mode, train.shard_url, train.dataset) == ("local", "", "digits")
        assert train.shard_sha256 == node_id[0] * 64  # the data it must still hold
        assert train.model_spec.norm_mean == (0.5,)  # the server never saw the pixels
    shard = await client.get(f"/shards/{trains['a'].job_id}/a", headers=a.auth)
    assert "own data" in (await error_of(shard, 404))["message"]
    train = trains["a"]
    start, _ = decode_weights(await (await client.get(train.weights_url)).read())

    # Round 1: each evaluates the initial model, then uploads; an inflated count is refused.
    await _evaluated(a, train, 0, correct=6, loss=2.3)
    await _evaluated(b, train, 0, correct=4, loss=2.2)
    inflated = await _upload(client, a, train, 1, _scaled(start, 100.0), TRAIN["a"] + 1)
    assert "samples must be 1..300" in (await error_of(inflated, 403))["message"]
    assert (await _upload(client, a, train, 1, _scaled(start, 2.0), 240)).status == 200
    assert (await _upload(client, b, train, 1, _scaled(start, 4.0), 80)).status == 200
    ready = await a.expect(WeightsReady)
    await b.expect(WeightsReady)
    averaged, _ = decode_weights(await (await client.get(ready.url)).read())
    for key, tensor in start.items():  # the honest uploads' weighted mean, exactly
        want = (tensor.double() * 2.0 * 240 + tensor.double() * 4.0 * 80) / 320
        assert torch.equal(averaged[key], want.float()), key

    # Round 2, then the final model is evaluated on the nodes before it is written.
    await _evaluated(a, train, 1, correct=30, loss=1.0)
    await _evaluated(b, train, 1, correct=10, loss=1.4)
    for node, samples in ((a, 240), (b, 80)):
        assert (await _upload(client, node, train, 2, averaged, samples)).status == 200
    for node, correct in ((a, 50), (b, 15)):
        asked = await node.expect(Evaluate)
        assert (asked.round, asked.dataset, asked.job_id) == (2, "digits", train.job_id)
        await _evaluated(node, train, 2, correct=correct, loss=0.5)
    for node in (a, b):
        assert (await node.expect(Done)).status == "completed"

    status = await (await client.get("/sync/status")).json()
    assert status["state"] == "completed" and status["data_mode"] == "local"
    assert status["test_set"] is None and status["history"][0]["test_accuracy"] is None
    assert [f["round"] for f in status["federated"]] == [0, 1, 2]
    assert status["history"][0]["federated"] == {
        "round": 1,
        "accuracy": 40 / 80,
        "loss": (1.0 * 60 + 1.4 * 20) / 80,
        "samples": 80,
        "nodes": 2,
    }
    assert status["final_accuracy"] == 65 / 80  # the nodes' reading of the final model
    model = await (await client.get(status["model_url"])).read()
    assert set(load(model)) == set(start)  # a whole model, as safetensors reads it
    metadata = _metadata(model)
    assert metadata["federated_accuracy"] == f"{65 / 80:.6f}" and metadata["federated_nodes"] == "2"
    assert "test_accuracy" not in metadata  # no server test set for the nodes' data
    details = await (await client.get(f"/runs/{train.job_id}")).json()
    assert details["evaluations_total"] == 6
    assert {(e["round"], e["node_id"], e["correct"]) for e in details["evaluations"]} >= {
        (0, "a", 6),
        (2, "b", 15),
    }
    assert odd.node_id not in {e["node_id"] for e in details["evaluations"]}

    # An evaluation-only run of the saved model over the same nodes.
    file = status["model_url"].rsplit("/", 1)[1]
    asking = asyncio.ensure_future(client.post(f"/evaluate/digits?model={file}", headers=ADMIN))
    for node, correct in ((a, 51), (b, 11)):
        asked = await node.expect(Evaluate)
        assert (asked.round, asked.weights_url) == (0, f"/models/{file}")
        assert asked.job_id.startswith("eval-digits-")
        assert (await (await client.get(asked.weights_url)).read()) == model  # what it checks
        answer = Evaluation(
            job_id=asked.job_id, round=0, samples=TEST[node.node_id], correct=correct, loss=0.4
        )
        await node.ws.send_str(encode(answer))
    evaluated = await asking
    assert evaluated.status == 200, await evaluated.text()
    table = await evaluated.json()
    assert [(n["name"], n["correct"], n["samples"]) for n in table["nodes"]] == [
        ("name-a", 51, 60),
        ("name-b", 11, 20),
    ]
    assert table["weighted"]["accuracy"] == 62 / 80 and table["missing"] == []
    assert table["left_out"][0]["node_id"] == "c"


def _metadata(data: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + size])["__metadata__"])


async def test_a_reading_beyond_the_announcement_is_dropped(make_client: MakeClient) -> None:
    client = await make_client(admin_token="t" * 32)
    a = await _holder(client, "a")
    assert (await client.post("/train/digits?epochs=1", headers=ADMIN)).status == 202
    train = await a.expect(Train)
    inflated = Evaluation(job_id=train.job_id, round=0, samples=TEST["a"] + 1, correct=61, loss=0.1)
    await a.ws.send_str(encode(inflated))
    await _evaluated(a, train, 0, correct=6, loss=2.3)
    dropped = 'fedavg_node_frames_dropped_total{reason="evaluation_bad_samples"} 1.0'
    for _ in range(200):
        if dropped in await (await client.get("/metrics")).text():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the inflated reading was not dropped")
    status = await (await client.get("/sync/status")).json()
    assert status["federated"] == [
        {"round": 0, "accuracy": 0.1, "loss": 2.3, "samples": 60, "nodes": 1}
    ]


async def test_an_evaluation_run_is_refused_when_it_cannot_run(make_client: MakeClient) -> None:
    client = await make_client(admin_token="t" * 32)
    missing = await client.post("/evaluate/digits", headers=ADMIN)
    assert "model is required" in (await error_of(missing, 400))["message"]
    unknown = await client.post("/evaluate/digits?model=nope.safetensors", headers=ADMIN)
    await error_of(unknown, 404)
    assert (await client.post("/evaluate/digits?model=x")).status == 401  # an admin's call


async def test_which_data_a_name_means_is_never_guessed(make_client: MakeClient) -> None:
    client = await make_client(admin_token="t" * 32)
    nobody = await client.post("/train/digits?mode=local", headers=ADMIN)
    assert (
        "no connected node holds a dataset named 'digits'"
        in (await error_of(nobody, 409))["message"]
    )
    a = await connect(client, "a")
    mnist = OwnDataset(
        name="mnist",
        input_shape=(1, 28, 28),
        class_names=tuple(str(c) for c in range(10)),
        train_samples=10,
        test_samples=5,
        fingerprint="a" * 64,
    )
    await a.ws.send_str(encode(OwnData(datasets=(mnist,))))
    await prepare_mnist(client, headers=ADMIN)
    for _ in range(200):
        rows = (await (await client.get("/nodes")).json())["nodes"]
        if rows[0]["own_data"]:
            break
        await asyncio.sleep(0.02)
    both = await client.post("/train/mnist", headers=ADMIN)
    assert "add mode=shards" in (await error_of(both, 409))["message"]
    bad = await client.post("/train/mnist?mode=everywhere", headers=ADMIN)
    assert "mode must be local or shards" in (await error_of(bad, 400))["message"]
    local = await client.post("/train/mnist?mode=local&epochs=1", headers=ADMIN)
    assert local.status == 202, await local.text()
    train = await a.expect(Train)
    assert train.data_mode == "local"
    status = await (await client.get("/sync/status")).json()
    assert status["test_set"] == "mnist"  # the server's split has the nodes' schema: used too


async def test_a_restarted_server_resumes_the_job_and_its_readings(make_client: MakeClient) -> None:
    """No prepared dataset to rebuild it from: the run's row holds what the server knew of
    the nodes' data, and the readings before the restart still count."""
    client = await make_client(admin_token="t" * 32)
    a = await _holder(client, "a")
    assert (await client.post("/train/digits?epochs=3", headers=ADMIN)).status == 202
    train = await a.expect(Train)
    start, _ = decode_weights(await (await client.get(train.weights_url)).read())
    await _evaluated(a, train, 0, correct=6, loss=2.3)
    assert (await _upload(client, a, train, 1, start, 240)).status == 200
    await a.expect(WeightsReady)
    await client.close()  # the orchestrator goes down between rounds

    again = await make_client(admin_token="t" * 32)
    status = await (await again.get("/sync/status")).json()
    assert (status["state"], status["round"], status["data_mode"]) == ("running", 2, "local")
    assert [f["round"] for f in status["federated"]] == [0]  # from SQLite
    back = await _holder(again, "a")  # the node reconnects with its data
    resumed = await back.expect(Train)
    assert (resumed.job_id, resumed.round, resumed.data_mode) == (train.job_id, 2, "local")
    assert resumed.shard_sha256 == "a" * 64
    inflated = await _upload(again, back, resumed, 2, start, TRAIN["a"] + 1)
    await error_of(inflated, 403)  # the cap survived the restart
    assert (await _upload(again, back, resumed, 2, start, 240)).status == 200
