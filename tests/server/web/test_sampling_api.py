"""Client sampling through the real app: each round trains the nodes the seed picks, the
others idle and may not upload, and a restart reopens a round with the pick it had."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from node.shared.protocol import Train, WeightsReady
from node.shared.shards import decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from server.core.sampling import Sampling, sample_nodes
from tests.server.web.conftest import (
    SPEC,
    Client,
    FakeNode,
    MakeClient,
    connect,
    error_of,
    job_spec,
    prepare_mnist,
)

NODES = ("a", "b", "c", "d")


async def _upload(client: Client, node: FakeNode, train: Train, round_: int) -> Any:
    state, _ = decode_weights(await (await client.get(train.weights_url)).read())
    shard = await client.get(train.shard_url, headers=node.auth)
    _, y = decode_xy(await shard.read())
    spec = await job_spec(client)
    body = encode_weights(state, WeightsMeta(spec=spec, round=round_, job_id=train.job_id))
    params = {"job": train.job_id, "round": str(round_), "samples": str(len(y))}
    return await client.post("/sync/weights", params=params, data=body, headers=node.auth)


def _picked(job_id: str, round_: int) -> list[str]:
    return sample_nodes(NODES, Sampling(0.5, 1), seed=0, job_id=job_id, round_=round_)


async def _no_frame(node: FakeNode) -> bool:
    try:
        await asyncio.wait_for(node.ws.receive(), 0.3)
    except TimeoutError:
        return True
    return False


async def test_each_round_trains_the_nodes_the_seed_picks(make_client: MakeClient) -> None:
    client = await make_client(model_spec=SPEC)
    nodes = {n: await connect(client, n) for n in NODES}
    await prepare_mnist(client)
    resp = await client.post("/train/mnist?epochs=2&fraction=0.5")
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    first = _picked(job_id, 1)
    assert len(first) == 2  # ceil(0.5 * 4)
    trains = {n: await nodes[n].expect(Train) for n in first}
    idle = [n for n in NODES if n not in first]
    status = await (await client.get("/sync/status")).json()
    assert status["sampled"] == sorted(f"name-{n}" for n in first)
    assert status["sampling"] == {"fraction": 0.5, "min_nodes": 1}
    rows = {r["node_id"]: r for r in (await (await client.get("/nodes")).json())["nodes"]}
    assert {rows[n]["state"] for n in idle} == {"not_sampled"}
    assert await _no_frame(nodes[idle[0]])  # an unpicked node is sent nothing
    # Yet it holds a shard (it was planned one): its upload is refused, not folded.
    theirs = dataclasses.replace(trains[first[0]], shard_url=f"/shards/{job_id}/{idle[0]}")
    refused = await _upload(client, nodes[idle[0]], theirs, 1)
    assert "did not sample" in (await error_of(refused, 409))["message"]

    second = _picked(job_id, 2)
    for node_id in first:
        assert (await _upload(client, nodes[node_id], trains[node_id], 1)).status == 200
    for node_id in first:  # a node picked again gets the new weights
        if node_id in second:
            assert (await nodes[node_id].expect(WeightsReady)).round == 1
    for node_id in second:
        if node_id not in first:  # picked for the first time: its train frame now
            trains[node_id] = await nodes[node_id].expect(Train)
    timeline = (await (await client.get("/monitor/timeline")).json())["events"]
    opened = [e["data"] for e in timeline if e["kind"] == "round_opened"]
    assert [o["sampled"] for o in sorted(opened, key=lambda o: o["round"])] == [
        sorted(f"name-{n}" for n in first),
        sorted(f"name-{n}" for n in second),
    ]


async def test_a_restart_reopens_a_round_with_the_pick_it_had(make_client: MakeClient) -> None:
    client = await make_client(model_spec=SPEC)
    for node_id in NODES:
        await connect(client, node_id)
    await prepare_mnist(client)
    resp = await client.post("/train/mnist?epochs=3&fraction=0.25&min_nodes=1")
    job_id = (await resp.json())["job_id"]
    before = (await (await client.get("/sync/status")).json())["sampled"]
    assert before == [f"name-{n}" for n in _picked_quarter(job_id, 1)]
    await client.close()

    again = await make_client(model_spec=SPEC)
    status = await (await again.get("/sync/status")).json()
    assert (status["state"], status["round"], status["sampled"]) == ("running", 1, before)
    assert status["sampling"] == {"fraction": 0.25, "min_nodes": 1}


def _picked_quarter(job_id: str, round_: int) -> list[str]:
    return sample_nodes(NODES, Sampling(0.25, 1), seed=0, job_id=job_id, round_=round_)
