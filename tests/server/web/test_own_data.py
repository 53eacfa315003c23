"""A node's own datasets as the server learns them: the ``own_data`` frame, shown in
``/nodes`` as the node said it (never a sample), refused whole when it breaks a rule."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from aiohttp import WSMsgType

from node.shared.protocol import Error, OwnData, OwnDataset, encode
from tests.server.web.conftest import Client, MakeClient, connect

PETS = OwnDataset(
    name="pets",
    input_shape=(3, 32, 32),
    class_names=("cat", "dog"),
    train_samples=80,
    test_samples=20,
    fingerprint="ab" * 32,
)


async def _own_data(client: Client, node_id: str) -> list[dict[str, Any]]:
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    (row,) = [n for n in nodes if n["node_id"] == node_id]
    return list(row["own_data"])


async def _until_said(client: Client, node_id: str) -> list[dict[str, Any]]:
    for _ in range(200):
        said = await _own_data(client, node_id)
        if said:
            return said
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node_id} never showed its own data")


async def test_a_nodes_own_data_shows_in_nodes_as_it_said_it(make_client: MakeClient) -> None:
    client = await make_client()
    node = await connect(client, "a")
    assert await _own_data(client, "a") == []
    digits = OwnDataset(
        name="digits",
        input_shape=(1, 28, 28),
        class_names=tuple("0123456789"),
        train_samples=10,
        test_samples=5,
        fingerprint="0" * 64,
        label_counts=(1,) * 10,
    )
    await node.ws.send_str(encode(OwnData(datasets=(PETS, digits))))
    pets, shown = await _until_said(client, "a")
    assert pets == {
        "name": "pets",
        "input_shape": [3, 32, 32],
        "dtype": "uint8",
        "num_classes": 2,
        "class_names": ["cat", "dog"],
        "train_samples": 80,
        "test_samples": 20,
        "fingerprint": "ab" * 32,
    }
    assert shown["label_counts"] == [1] * 10  # sent: shown; PETS sent none: none shown
    await node.ws.send_str(encode(OwnData(datasets=(PETS,))))  # a later frame replaces it
    for _ in range(200):
        if len(await _own_data(client, "a")) == 1:
            break
        await asyncio.sleep(0.05)
    assert [d["name"] for d in await _own_data(client, "a")] == ["pets"]


async def test_an_own_data_frame_that_breaks_a_rule_closes_the_socket(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    node = await connect(client, "a")
    frame: dict[str, Any] = json.loads(encode(OwnData(datasets=(PETS,))))
    frame["datasets"][0]["train_samples"] = 0
    await node.ws.send_str(json.dumps(frame))
    error = await node.expect(Error)
    assert error.code == "protocol" and "train_samples" in error.message
    msg = await node.ws.receive(timeout=10)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert await _own_data(client, "a") == []


async def test_datasets_lists_what_connected_nodes_hold_by_name(make_client: MakeClient) -> None:
    client = await make_client()
    first, second, odd = [await connect(client, n) for n in ("a", "b", "c")]
    assert (await (await client.get("/datasets")).json())["announced"] == []
    await first.ws.send_str(encode(OwnData(datasets=(PETS,))))
    await second.ws.send_str(
        encode(OwnData(datasets=(dataclasses.replace(PETS, train_samples=40, test_samples=5),)))
    )
    small = dataclasses.replace(PETS, input_shape=(1, 28, 28))
    await odd.ws.send_str(encode(OwnData(datasets=(small,))))
    for _ in range(200):
        announced = (await (await client.get("/datasets")).json())["announced"]
        if announced and len(announced[0]["nodes"]) + len(announced[0]["left_out"]) == 3:
            break
        await asyncio.sleep(0.05)
    (pets,) = announced
    assert pets["nodes"] == ["a", "b"] and pets["input_shape"] == [3, 32, 32]
    assert (pets["train_samples"], pets["test_samples"]) == (120, 25)
    assert pets["left_out"] == [
        {"node_id": "c", "why": "input_shape [1, 28, 28], not the majority's [3, 32, 32]"}
    ]
    await odd.ws.close()  # a node that goes offline no longer counts
    for _ in range(200):
        announced = (await (await client.get("/datasets")).json())["announced"]
        if not announced[0]["left_out"]:
            break
        await asyncio.sleep(0.05)
    assert announced[0]["left_out"] == [] and announced[0]["nodes"] == ["a", "b"]
