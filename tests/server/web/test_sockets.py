"""The node socket's liveness and a stop's effect on the nodes, over real sockets.

A hand-made node (tests/server/web/conftest.py) on the real app: it decides every frame, so
a test can send a progress frame after the stop, or none at all while the heartbeat runs.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aiohttp import WSMsgType

from node.shared.evaluate import evaluate
from node.shared.protocol import Done, Hello, Progress, Train, WeightsReady, encode
from node.shared.shards import decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from tests.server.web.conftest import SPEC, Client, FakeNode, MakeClient, connect, prepare_mnist


async def _node_row(client: Client, node_id: str) -> dict[str, Any]:
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    (row,) = [n for n in nodes if n["node_id"] == node_id]
    return dict(row)


async def _until(check: Any, seconds: float = 20.0) -> None:
    """Poll ``check`` until it holds; fail after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{check.__name__} did not hold within {seconds} s")


async def _upload_start_weights(client: Client, node: FakeNode, train: Train) -> None:
    """Round 1's upload: the start weights back, for the whole shard."""
    state, _ = decode_weights(await (await client.get(train.weights_url)).read())
    shard = await client.get(train.shard_url, headers=node.auth)
    _, y = decode_xy(await shard.read())
    body = encode_weights(state, WeightsMeta(spec=SPEC, round=1, job_id=train.job_id))
    params = {"job": train.job_id, "round": "1", "samples": str(len(y))}
    resp = await client.post("/sync/weights", params=params, data=body, headers=node.auth)
    assert resp.status == 200, await resp.text()


async def test_a_stop_while_rounds_settle_idles_the_nodes_at_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race behind "stopped, yet training 2 254/365": a stop waited for the rounds
    still being evaluated (minutes under load) before it told the nodes, and meanwhile
    their progress kept the rows training. Now ``done`` goes out at once, and progress
    still in flight after it leaves the row idle; the settling round is still recorded."""
    release = threading.Event()

    def held_evaluate(*args: Any) -> tuple[float, float]:
        assert release.wait(30), "the test never released evaluation"
        return evaluate(*args)

    monkeypatch.setattr("server.job.settle.evaluate", held_evaluate)
    client = await make_client(admin_token="t" * 32)
    admin = {"Authorization": "Bearer " + "t" * 32}
    node = await connect(client, "a")
    await prepare_mnist(client, headers=admin)
    resp = await client.post("/train/mnist?epochs=3", headers=admin)
    assert resp.status == 202, await resp.text()
    train = await node.expect(Train)
    await _upload_start_weights(client, node, train)
    assert (await node.expect(WeightsReady)).round == 1  # round 1 settles, held
    busy = Progress(job_id=train.job_id, round=2, batch=254, batches=365, loss=0.5)
    await node.ws.send_str(encode(busy))

    async def training() -> bool:
        return bool((await _node_row(client, "a"))["state"] == "training")

    await _until(training)
    stop = asyncio.ensure_future(client.post("/jobs/stop", headers=admin))
    done = await node.expect(Done)  # while round 1 is still being evaluated
    assert done.status == "stopped" and not release.is_set()
    late = Progress(job_id=train.job_id, round=2, batch=255, batches=365, loss=0.5)
    await node.ws.send_str(encode(late))
    dropped = 'fedavg_node_frames_dropped_total{reason="wrong_round"} 1.0'

    async def counted() -> bool:
        return dropped in await (await client.get("/metrics")).text()

    await _until(counted)
    row = await _node_row(client, "a")
    assert (row["state"], row["batch"]) == ("idle", 254)

    release.set()
    answer = await stop
    assert answer.status == 200, await answer.text()
    status = await (await client.get("/sync/status")).json()
    assert status["state"] == "stopped"
    assert [h["round"] for h in status["history"]] == [1]  # closed before the stop: kept
    assert (await _node_row(client, "a"))["state"] == "idle"


async def test_an_idle_nodes_last_seen_follows_the_heartbeat(make_client: MakeClient) -> None:
    """A healthy idle node sends no frames of its own: its pongs to the server's pings
    (every heartbeat_s) keep its last_seen current, so it never looks hung."""
    client = await make_client(heartbeat_s=0.3)
    node = await connect(client, "idle")
    # Reading is what answers pings (as the real node's receive loop does); nothing comes.
    reader = asyncio.ensure_future(node.ws.receive())
    first = (await _node_row(client, "idle"))["last_seen"]

    async def advanced() -> bool:
        row = await _node_row(client, "idle")
        return bool(row["connected"] and row["last_seen"] > first + 0.9)  # 3 heartbeats on

    await _until(advanced)
    assert not reader.done()  # no frame was sent to it: the pongs alone did it
    reader.cancel()


async def test_a_nodes_own_pings_are_answered(make_client: MakeClient) -> None:
    """The server answers pings itself (it reads them to count them): a node whose
    heartbeat gets no pong within half its period would close the socket."""
    client = await make_client()
    ws = await client.ws_connect("/ws/node", autoping=False)
    hello = Hello("p", "p", 10.0, "cpu", "t", secret="s" * 16)
    await ws.ping(b"before-hello")
    assert (await ws.receive(timeout=10)).type is WSMsgType.PONG
    await ws.send_str(encode(hello))
    assert (await ws.receive(timeout=10)).type is WSMsgType.TEXT  # the welcome
    await ws.ping(b"after")
    pong = await ws.receive(timeout=10)
    assert (pong.type, pong.data) == (WSMsgType.PONG, b"after")
    await ws.close()
