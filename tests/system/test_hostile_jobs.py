"""Hostile participants against the real programs: a node that lies about its capacity,
uploads absurd weights, hogs the upload slots, or vanishes mid-round.

``fedavg-server`` and the honest ``fedavg-node`` workers run as processes on loopback; the
attacker is a :class:`~tests.system.hostile.FakeNode` speaking the public protocol, so the
server judges it by the same rules as any node.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import torch

from node.shared.protocol import Done, Train, WeightsReady
from node.shared.shards import decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights, expected_layout
from server.demo.local_cluster import LocalCluster
from tests.system.clusters import prepare
from tests.system.hostile import FakeNode

pytestmark = pytest.mark.slow

LIAR_ROUNDS = 10  # enough for both runs to near their plateau, where 2 points mean something
JSON_ROUTES = (
    "/health",
    "/nodes",
    "/datasets",
    "/sync/status",
    "/models",
    "/runs",
    "/monitor/overview",
    "/monitor/nodes",
    "/monitor/timeline",
)


def federation(make_cluster: Any, honest: int, *node_args: str, **env: str) -> LocalCluster:
    """A server with ``env`` and ``honest`` real nodes, node-1..node-N, MNIST prepared."""
    cluster: LocalCluster = make_cluster(**env)
    prepare(cluster, *(f"node-{i}" for i in range(1, honest + 1)), node_args=node_args)
    return cluster


def call(cluster: LocalCluster, method: str, path: str) -> Any:
    return asyncio.to_thread(cluster.request, method, path)


async def run_job(cluster: LocalCluster, rounds: int, within: float = 180) -> dict[str, Any]:
    await call(cluster, "POST", f"/train/mnist?epochs={rounds}")
    status: dict[str, Any] = await asyncio.to_thread(cluster.wait_job, within)
    return status


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, which are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: the answer holds {name}")

    return json.loads(text, parse_constant=refuse)


async def every_route_is_strict_json(node: FakeNode) -> None:
    for route in JSON_ROUTES:
        async with node.http.get(node.url + route) as resp:
            assert resp.status == 200, route
            strict_json(await resp.text())
    async with node.http.ws_connect(node.url + "/ws/dashboard") as ws:
        strict_json((await ws.receive(timeout=30)).data)  # the snapshot


def zeros_for(train: Train, round_: int) -> bytes:
    spec = train.model_spec
    state = {
        k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in expected_layout(spec).items()
    }
    return bytes(encode_weights(state, WeightsMeta(spec, round_, train.job_id)))


async def rounds_of(node: FakeNode) -> AsyncIterator[tuple[Train, int, str]]:
    """Each round the server asks ``node`` to train, until the job is done."""
    while True:
        frame = await node.wait_for(Train | WeightsReady | Done, within=180)  # type: ignore[arg-type]
        if isinstance(frame, Done):
            return
        if isinstance(frame, Train):
            yield frame, frame.round, frame.weights_url
        elif node.train is not None and frame.round < node.train.rounds:
            yield node.train, frame.round + 1, frame.url


async def shard_share(node: FakeNode, train: Train) -> int:
    status, shard = await node.get(train.shard_url)
    assert status == 200

    x, _ = decode_xy(shard)
    return int(x.shape[0])  # the most the server lets it claim


# -- (1) a capacity lie ---------------------------------------------------------------------------


async def test_a_capacity_lie_cannot_take_the_shards_from_the_honest_nodes(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = federation(make_cluster, 3)
    nodes = (await call(cluster, "GET", "/nodes"))["nodes"]
    honest_max = max(n["capacity"] for n in nodes if n["connected"])
    for i, lie in enumerate((1e300, 2e5, 10 * honest_max)):
        name = f"liar-{i}"
        async with FakeNode(cluster.url, name, capacity=lie) as liar:
            await liar.join()
            plan = await call(cluster, "POST", "/train/mnist/prepare")
        own = {s["name"]: s["own"] for s in plan["shards"]}
        assert set(own) == {"node-1", "node-2", "node-3", name}, (lie, own)
        assert all(own[f"node-{i}"] > 0 for i in (1, 2, 3)), (lie, own)
        lower_median = sorted(own.values())[1]
        assert own[name] <= lower_median + 1, (lie, own)  # FEDAVG_MAX_CAPACITY_RATIO=1
        assert own[name] < sum(own.values()) / 2, (lie, own)


async def liar_uploading_zeros(liar: FakeNode) -> list[int]:
    uploaded = []
    async for train, round_, _ in rounds_of(liar):
        samples = await shard_share(liar, train)
        status, answer = await liar.upload(train.job_id, round_, samples, zeros_for(train, round_))
        assert status == 200, answer
        uploaded.append(round_)
    return uploaded


async def test_a_zero_uploading_liar_under_the_median_costs_under_two_points(make_cluster) -> None:  # type: ignore[no-untyped-def]
    # Capacities pinned (all equal): the same shard plan every run, so the two runs differ
    # by the liar alone, not by what the nodes measured under load.
    cluster = federation(
        make_cluster, 3, "--capacity", "1000", AGGREGATION="median", EPOCH_SYNC_TIMEOUT="60"
    )
    clean = await run_job(cluster, LIAR_ROUNDS)
    assert clean["state"] == "completed", clean
    async with FakeNode(cluster.url, "liar", capacity=1e300) as liar:
        await liar.join()
        attack = asyncio.create_task(liar_uploading_zeros(liar))
        attacked = await run_job(cluster, LIAR_ROUNDS)
        assert await asyncio.wait_for(attack, 60) == list(range(1, LIAR_ROUNDS + 1))
    assert attacked["state"] == "completed", attacked
    print(f"clean {clean['final_accuracy']:.4f}, with the liar {attacked['final_accuracy']:.4f}")
    assert all("liar" in h["contributors"] for h in attacked["history"])
    assert attacked["final_accuracy"] >= clean["final_accuracy"] - 0.02


# -- (2) an absurd but finite upload --------------------------------------------------------------


async def test_an_absurd_upload_is_refused_and_no_answer_ever_holds_nan(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = federation(make_cluster, 2, AGGREGATION="weighted", EPOCH_SYNC_TIMEOUT="3")
    refusals: list[tuple[int, str]] = []
    async with FakeNode(cluster.url, "mallory") as mallory:
        await mallory.join()

        async def attack() -> None:
            async for train, round_, weights_url in rounds_of(mallory):
                _, body = await mallory.get(weights_url)
                state, meta = decode_weights(bytearray(body))
                scaled = {k: v.float() * 1e30 for k, v in state.items()}  # finite, absurd
                # A diverged node's progress: NaN is data, not a protocol error.
                progress = {"job_id": train.job_id, "round": round_, "batch": 1, "batches": 2}
                await mallory.send_text(
                    json.dumps({"type": "progress", **progress, "loss": math.nan})
                )
                data = bytes(encode_weights(scaled, WeightsMeta(meta.spec, round_, train.job_id)))
                samples = await shard_share(mallory, train)
                code, answer = await mallory.upload(train.job_id, round_, samples, data)
                refusals.append((code, answer["error"]["message"] if code != 200 else ""))
                await every_route_is_strict_json(mallory)  # during the job

        attacking = asyncio.create_task(attack())
        status = await run_job(cluster, 3)
        await asyncio.wait_for(attacking, 60)
        await every_route_is_strict_json(mallory)  # and after it
        assert mallory.ws is not None and not mallory.ws.closed  # never thrown out for NaN
    assert status["state"] == "completed", status
    assert [code for code, _ in refusals] == [400, 400, 400], refusals
    assert all("FEDAVG_MAX_UPDATE_RATIO" in message for _, message in refusals)
    assert all(h["contributors"] == ["node-1", "node-2"] for h in status["history"])
    assert math.isfinite(status["final_accuracy"]) and status["final_accuracy"] > 0.5


# -- (3) one node holding the upload slots --------------------------------------------------------


async def trickle(seconds: float) -> AsyncIterator[bytes]:
    for _ in range(int(seconds)):
        yield b"\0"
        await asyncio.sleep(1.0)


async def test_a_node_trickling_uploads_cannot_hold_the_slots(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = federation(make_cluster, 2, EPOCH_SYNC_TIMEOUT="4", FEDAVG_UPLOAD_SLOTS="2")
    answers: list[int] = []
    async with FakeNode(cluster.url, "hog") as hog:
        await hog.join()

        async def one(train: Train, round_: int) -> None:
            # Declares 1 MB (within the model's limit: 2 MB would get 413 at once) and sends
            # a byte a second, so the body never goes idle.
            headers = {"Content-Length": str(1 << 20)}
            try:
                code, _ = await hog.upload(train.job_id, round_, 1, trickle(60), headers)
                answers.append(code)
            except OSError:  # cut mid-body
                answers.append(-1)

        async def hogging() -> None:
            tasks = []
            async for train, round_, _ in rounds_of(hog):
                tasks += [asyncio.create_task(one(train, round_)) for _ in range(4)]
                await asyncio.sleep(0.5)
            await asyncio.gather(*tasks)

        attack = asyncio.create_task(hogging())
        status = await run_job(cluster, 5, within=120)
        await asyncio.wait_for(attack, 60)
    assert status["state"] == "completed", status
    assert all(h["contributors"] == ["node-1", "node-2"] for h in status["history"])
    # Each round: three refused at once (one in flight per node), one cut when its round closed.
    assert 200 not in answers and answers.count(409) >= 3 * len(status["history"]), answers
    # After FEDAVG_MAX_MISSED_ROUNDS (2) rounds, the hog is no longer waited for.
    assert [h["partial"] for h in status["history"]] == [True, True, False, False, False]


# -- (7) a node that vanishes, and one that stays silent ------------------------------------------


async def test_a_round_with_a_vanished_node_closes_as_soon_as_the_rest_are_in(make_cluster) -> None:  # type: ignore[no-untyped-def]
    # A 600 s deadline: a round that waited it out would time the test out.
    cluster = federation(make_cluster, 2, EPOCH_SYNC_TIMEOUT="600")
    ghost = FakeNode(cluster.url, "ghost")
    await ghost.join()
    await call(cluster, "POST", "/train/mnist?epochs=2")
    train = await ghost.wait_for(Train)
    assert train.round == 1
    await ghost.close()  # gone mid-round, without a word
    status = await asyncio.to_thread(cluster.wait_job, 120)
    assert status["state"] == "completed", status
    first = status["history"][0]
    assert first["missing"] == ["ghost"] and first["contributors"] == ["node-1", "node-2"]
    assert first["seconds"] < 600


async def test_a_stopped_node_dropped_by_the_heartbeat_holds_its_round_no_longer(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    # The case: SIGSTOP (as if its network were cut), then the 1 s heartbeat drops
    # it. The round must close then, not at the 600 s deadline.
    cluster = federation(make_cluster, 3, FEDAVG_HEARTBEAT="1", EPOCH_SYNC_TIMEOUT="600")
    await call(cluster, "POST", "/train/mnist?epochs=1000")
    stopped = next(p for p in cluster.procs if p.name == "node-3")
    try:
        async with asyncio.timeout(120):
            while (await call(cluster, "GET", "/sync/status"))["round"] < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        stopped.popen.send_signal(signal.SIGSTOP)
        async with asyncio.timeout(120):
            while True:
                status = await call(cluster, "GET", "/sync/status")
                short = [h for h in status["history"] if h["missing"] == ["node-3"]]
                if short:
                    break
                await asyncio.sleep(0.2)
        await call(cluster, "POST", "/jobs/stop")
    finally:
        stopped.expect_exit = True
        stopped.popen.kill()
    assert short[0]["contributors"] == ["node-1", "node-2"] and short[0]["seconds"] < 600


async def test_a_silent_node_costs_a_deadline_only_until_it_has_missed_k_rounds(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = federation(make_cluster, 2, EPOCH_SYNC_TIMEOUT="3", FEDAVG_MAX_MISSED_ROUNDS="2")
    async with FakeNode(cluster.url, "silent") as silent:
        await silent.join()  # connected, answers pings, never uploads
        status = await run_job(cluster, 5, within=120)
        assert silent.ws is not None and not silent.ws.closed
    assert status["state"] == "completed", status
    assert [h["missing"] for h in status["history"]] == [["silent"]] * 2 + [[]] * 3
    assert "silent" in status["not_waited_for"]
