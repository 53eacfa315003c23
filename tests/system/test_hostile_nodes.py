"""Hostile participants with the join token, against a real server process on loopback: one
that claims a live node's id, one that floods frames, and one that registers thousands of
made-up nodes. Each attack is bounded in count and time, and every process is stopped.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.shared.logs import LOG_BURST
from node.shared.protocol import ID_TAKEN, Error, Progress, Welcome, encode
from server.demo.local_cluster import LocalCluster
from tests.system.hostile import FakeNode

pytestmark = pytest.mark.slow

FAST_JOB = {"FEDAVG_MAX_BATCHES": "20", "EPOCH_SYNC_TIMEOUT": "60"}


async def get(cluster: LocalCluster, path: str) -> Any:
    return await asyncio.to_thread(cluster.request, "GET", path)


async def node_row(cluster: LocalCluster, node_id: str) -> dict[str, Any]:
    rows = (await get(cluster, "/nodes"))["nodes"]
    return next(n for n in rows if n["node_id"] == node_id)


def metric(cluster: LocalCluster, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when the series does not exist yet)."""
    import urllib.request

    with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def timeline(cluster: LocalCluster) -> list[dict[str, Any]]:
    with sqlite3.connect(cluster.home / "fedavg.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT kind, node_id, data FROM events ORDER BY id")]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


async def close_code(node: FakeNode, within: float = 10.0) -> int | None:
    """Read until the server closes the socket; its close code."""
    assert node.ws is not None
    async with asyncio.timeout(within):
        while not node.ws.closed:
            msg = await node.ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
    return node.ws.close_code


# -- 5: node-id impersonation -------------------------------------------------------------------


async def test_a_live_nodes_id_with_a_wrong_secret_is_refused_every_time(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(**FAST_JOB)
    cluster.start_node("honest", threads=1)
    cluster.wait_nodes(1)
    await asyncio.to_thread(cluster.request, "POST", "/datasets/prepare-mnist")
    before = await node_row(cluster, "honest")  # the id is public: that is the premise
    await asyncio.to_thread(cluster.request, "POST", "/train/mnist?epochs=3")

    attempts = 20
    for _ in range(attempts):  # reconnecting at once, as the attacker did
        async with FakeNode(cluster.url, "honest") as mallory:  # its own (wrong) secret
            answer = await mallory.join()
            assert isinstance(answer, Error) and answer.code == ID_TAKEN, answer
            assert mallory.session_token is None
            assert await close_code(mallory) == 1008

    status = await asyncio.to_thread(cluster.wait_job, 180)
    assert status["state"] == "completed", status
    assert all(h["contributors"] == ["honest"] for h in status["history"])  # its uploads
    after = await node_row(cluster, "honest")
    assert after["connected"] and after["connected_at"] == before["connected_at"]  # same session
    assert metric(cluster, "fedavg_node_hellos_refused_total", reason="id_taken") == attempts
    kinds = [(e["kind"], e["node_id"]) for e in timeline(cluster)]
    assert kinds.count(("node_joined", "honest")) == 1
    assert ("node_left", "honest") not in kinds
    honest_log = (cluster.log_dir / "honest.log").read_text()
    assert "replaced" not in honest_log and "socket_closed" not in honest_log
    # Each refusal is logged, up to the log's repeat limit (then one line gives the count).
    logged = (cluster.log_dir / "server.log").read_text().count('"event": "node_id_taken"')
    assert logged == min(attempts, LOG_BURST)


async def test_a_restarted_node_keeps_its_id_and_an_impostor_never_gets_it(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    cache = cluster.home / "alpha-cache"
    argv = ["-m", "node.cli", "--orchestrator", cluster.url, "--name", "alpha", "--threads", "1"]

    def start_alpha() -> None:
        import sys

        cluster.spawn("alpha", [sys.executable, *argv], env={"FEDAVG_CACHE_DIR": str(cache)})

    start_alpha()  # no --node-id: the id is generated once and kept in the cache dir
    cluster.wait_nodes(1)
    first = (await get(cluster, "/nodes"))["nodes"][0]
    assert first["node_id"].startswith("alpha-")
    identity = json.loads((cache / "identity.json").read_text())
    assert identity["node_id"] == first["node_id"]
    assert (cache / "identity.json").stat().st_mode & 0o777 == 0o600
    assert identity["secret"] not in (cluster.log_dir / "alpha.log").read_text()

    cluster.kill("alpha", signal.SIGKILL)
    start_alpha()
    async with asyncio.timeout(60):
        while not (row := await node_row(cluster, first["node_id"]))["connected"] or (  # noqa: ASYNC110 (polling another process)
            row["connected_at"] == first["connected_at"]
        ):
            await asyncio.sleep(0.2)
    assert [n["node_id"] for n in (await get(cluster, "/nodes"))["nodes"]] == [first["node_id"]]

    # The binding is in SQLite: after a server restart, the first comer still cannot claim
    # the id, even before its owner is back.
    cluster.kill("alpha", signal.SIGKILL)
    cluster.kill("server", signal.SIGKILL)
    cluster.start_server()
    cluster.wait_healthy()
    async with FakeNode(cluster.url, first["node_id"]) as mallory:
        answer = await mallory.join()
        assert isinstance(answer, Error) and answer.code == ID_TAKEN, answer
    async with FakeNode(cluster.url, first["node_id"], secret=identity["secret"]) as owner:
        assert isinstance(await owner.join(), Welcome)  # the right secret is the node


def test_a_second_node_with_another_cache_cannot_take_a_used_id(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    cluster.start_node("node-1", threads=1)
    cluster.wait_nodes(1)
    twin = cluster.start_node(
        "twin", "--node-id", "node-1", threads=1, env={"FEDAVG_CACHE_DIR": str(cluster.home / "b")}
    )
    twin.expect_exit = True
    assert twin.popen.wait(timeout=120) == 3  # refused for good: retrying cannot help
    log = twin.log_path.read_text()
    assert "join_refused" in log and "belongs to another node" in log
    rows = cluster.request("GET", "/nodes")["nodes"]
    assert [(n["node_id"], n["name"], n["connected"]) for n in rows] == [("node-1", "node-1", True)]


# -- 6: progress flood --------------------------------------------------------------------------


async def flood(url: str, seconds: float) -> tuple[int, int]:
    """Progress frames for a job that does not exist, as fast as the socket takes them,
    reconnecting when cut off, for ``seconds``; (frames sent, times the server cut us off)."""
    sent = cuts = 0
    text = encode(Progress(job_id="no-such-job", round=1, batch=1, batches=2, loss=0.5))
    deadline = time.monotonic() + seconds
    async with FakeNode(url, "flooder") as node:
        while time.monotonic() < deadline:
            if not isinstance(await node.join(), Welcome):
                break
            assert node.ws is not None
            closed = asyncio.create_task(close_code(node, within=seconds + 30))
            try:
                while time.monotonic() < deadline and not closed.done():
                    for _ in range(100):
                        await node.ws.send_str(text)
                    sent += 100
                    await asyncio.sleep(0)  # let the reader see the error frame and the close
            except (ConnectionError, aiohttp.ClientError):
                pass
            if time.monotonic() < deadline:
                cuts += await closed == 1008
            closed.cancel()
            await asyncio.gather(closed, return_exceptions=True)
            await node.ws.close()
            node.ws = None
    return sent, cuts


async def test_a_progress_flood_is_cut_off_and_never_reaches_the_dashboard(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(**FAST_JOB)
    cluster.start_node("honest", threads=1)
    cluster.wait_nodes(1)
    await asyncio.to_thread(cluster.request, "POST", "/datasets/prepare-mnist")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        await ws.receive()  # the snapshot
        attack = asyncio.create_task(flood(cluster.url, seconds=5.0))
        await asyncio.to_thread(cluster.request, "POST", "/train/mnist?epochs=3")
        healthy = 0
        while not attack.done():  # /health answers while the flood is on (bounded waits)
            async with http.get(cluster.url + "/health", timeout=aiohttp.ClientTimeout(10)) as r:
                assert r.status == 200
                healthy += 1
            await asyncio.sleep(0.2)
        sent, cuts = await attack
        status = await asyncio.to_thread(cluster.wait_job, 180)
        events: list[dict[str, Any]] = []
        with pytest.raises(TimeoutError):  # drain what was published: nothing more comes
            async with asyncio.timeout(1):
                async for msg in ws:
                    events.append(json.loads(msg.data))
    assert healthy >= 1
    assert status["state"] == "completed", status
    assert all(h["contributors"] == ["honest"] for h in status["history"])
    assert cuts >= 1, (sent, cuts)
    assert metric(cluster, "fedavg_node_sockets_cut_total", reason="flood") >= cuts
    dropped = metric(cluster, "fedavg_node_frames_dropped_total", reason="rate")
    assert dropped > 0
    wrong_job = metric(cluster, "fedavg_node_frames_dropped_total", reason="wrong_job")
    assert wrong_job > 0  # those within the rate were read, and dropped for their job
    assert dropped + wrong_job <= sent
    assert not [e for e in events if e.get("node_id") == "flooder" and e["kind"] == "progress"]
    row = await node_row(cluster, "flooder")
    assert (row["batch"], row["batches"], row["loss"], row["job_id"]) == (0, 0, None, None)
    assert "node_flooding" in (cluster.log_dir / "server.log").read_text()


# -- 11: a registry that forgets ----------------------------------------------------------------


async def register(url: str, count: int, prefix: str, concurrency: int = 32) -> int:
    """``count`` made-up nodes, each connect + hello + close; how many were welcomed."""
    gate = asyncio.Semaphore(concurrency)
    welcomed = 0

    async def one(i: int) -> None:
        nonlocal welcomed
        async with gate, FakeNode(url, f"{prefix}-{i:05d}") as node:
            if isinstance(await node.join(), Welcome):
                welcomed += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return welcomed


async def test_thousands_of_made_up_nodes_leave_the_server_bounded(make_cluster) -> None:  # type: ignore[no-untyped-def]
    caps = {"FEDAVG_MAX_OFFLINE_NODES": "50", "FEDAVG_MAX_EVENTS": "500"}
    cluster = make_cluster(**caps, FEDAVG_MAX_NODE_IDS="200")
    pid = cluster.server.pid
    async with asyncio.timeout(120):
        assert await register(cluster.url, 300, "warm") == 300  # code paths and caches warm
        rss_before = rss_kib(pid)
        assert await register(cluster.url, 3000, "fake") == 3000
        while (await get(cluster, "/health"))["nodes"]:  # noqa: ASYNC110 (every leave booked)
            await asyncio.sleep(0.1)
    rss_after = rss_kib(pid)

    page = await asyncio.to_thread(cluster.request, "GET", "/nodes")
    assert page["total"] == 50 and len(page["nodes"]) == 50
    assert all(n["node_id"].startswith("fake-") for n in page["nodes"])  # newest gone kept
    assert len(json.dumps(page)) < 50 * 1024
    assert (await get(cluster, "/nodes?limit=10&offset=45"))["nodes"] == page["nodes"][45:]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        snapshot = await ws.receive()
    assert len(snapshot.data) < 100 * 1024 and len(json.loads(snapshot.data)["nodes"]) == 50
    with sqlite3.connect(cluster.home / "fedavg.sqlite3") as db:
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        ids = db.execute("SELECT COUNT(*) FROM node_ids").fetchone()[0]
    assert events <= 500 + 50  # the cap plus one trim batch (a tenth of it)
    assert ids <= 200 + 20
    growth_mib = (rss_after - rss_before) / 1024
    print(f"server RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
    assert growth_mib < 100
