"""A stop in the middle of a slow round, and idle nodes that stay seen: real server and
node processes on loopback, with both tokens set, as an operator runs them.

The job is slowed down by its batches (batch 8, two local epochs of 120 steps), so the
stop lands while the nodes train, with progress in flight.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from server.demo.local_cluster import LocalCluster
from tests.system.clusters import prepare

pytestmark = pytest.mark.slow

ADMIN = "a" * 32
ENV = {"FEDAVG_ADMIN_TOKEN": ADMIN, "FEDAVG_NODE_TOKEN": "n" * 32, "FEDAVG_HEARTBEAT": "1"}
SLOW_ROUNDS = {"rounds": 3, "train": {"batch_size": 8, "local_epochs": 2, "max_batches": 120}}


def nodes(cluster: LocalCluster) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cluster.request("GET", "/nodes")["nodes"]
    return rows


def wait_until(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds:.0f} s"
        time.sleep(0.2)


async def progress_event(cluster: LocalCluster, round_: int, epoch: int) -> dict[str, Any]:
    """The first ``progress`` event on the dashboard socket about ``round_``, ``epoch``."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
        asyncio.timeout(180),
    ):
        await ws.receive()  # the snapshot
        await asyncio.to_thread(cluster.request, "POST", "/train/mnist", body=SLOW_ROUNDS)
        async for msg in ws:
            event = json.loads(msg.data)
            data = event.get("data") or {}
            if event["kind"] == "progress" and (data["round"], data["epoch"]) == (round_, epoch):
                return dict(data)
    raise AssertionError("the dashboard socket closed")


async def test_a_stop_in_round_2_idles_every_node_and_idle_nodes_stay_seen(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(**ENV)
    await asyncio.to_thread(prepare, cluster, "node-1", "node-2")
    progress = await progress_event(cluster, round_=2, epoch=2)
    assert progress["epochs"] == 2 and 1 <= progress["batch"] <= progress["batches"]

    assert cluster.request("POST", "/jobs/stop")["state"] == "stopped"
    wait_until(lambda: {n["state"] for n in nodes(cluster)} == {"idle"}, "every node idle")
    logs = [proc.log_path for proc in cluster.procs if proc.name != "server"]
    wait_until(lambda: all('"status": "stopped"' in log.read_text() for log in logs), "job_done")
    rows = nodes(cluster)
    assert all(n["connected"] and n["job_id"] for n in rows)
    assert {n["round"] for n in rows} <= {2, 3}  # the rows keep what they last showed

    # No job now, no frames of their own: the heartbeat's pongs keep each node seen.
    seen = {n["node_id"]: n["last_seen"] for n in rows}
    wait_until(
        lambda: all(n["last_seen"] >= seen[n["node_id"]] + 2 for n in nodes(cluster)),
        "last_seen moving on for every idle node",
    )
    assert {n["state"] for n in nodes(cluster)} == {"idle"}
