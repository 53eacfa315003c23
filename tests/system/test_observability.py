"""Metrics, W&B and dashboard back-pressure against a real federation (processes, sockets)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from wandb_records import history, run_config, run_info

from server.demo.local_cluster import LocalCluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    env = {"FEDAVG_MNIST_DOWNLOAD": "false", **getattr(request, "param", {})}
    with LocalCluster(home=tmp_path / "home", port=free_port(), env=env) as c:
        c.start_server()
        c.wait_healthy()
        for i in (1, 2):
            c.start_node(f"node-{i}", threads=1)
        c.wait_nodes(2)
        c.request("POST", "/datasets/prepare-mnist")
        yield c


def scrape(cluster: LocalCluster) -> str:
    import urllib.request

    with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text: str = resp.read().decode()
        return text


def value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the scrape"
    return float(match.group(1))


def promtool_check(text: str, tmp_path: Path) -> None:
    path = tmp_path / "scrape.txt"
    path.write_text(text)
    with path.open("rb") as scrape_file:
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            stdin=scrape_file,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stdout + result.stderr


async def next_event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, object]:
    async for msg in ws:
        event = json.loads(msg.data)
        if event.get("kind") == kind:
            return event  # type: ignore[no-any-return]
    raise AssertionError(f"socket closed before a {kind} event")


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool missing: apt-get install prometheus (./dev test does, as root)",
)
async def test_metrics_pass_promtool_during_a_run_and_move_as_rounds_close(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    before = scrape(cluster)
    promtool_check(before, tmp_path)
    assert value(before, "fedavg_nodes_connected") == 2
    assert value(before, "fedavg_rounds_completed_total") == 0
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        await ws.receive()
        cluster.request("POST", "/train/mnist?epochs=3")
        await next_event(ws, "round_closed")
        during = scrape(cluster)  # taken while the job runs
        await next_event(ws, "job_done")
    after = scrape(cluster)
    promtool_check(during, tmp_path)
    promtool_check(after, tmp_path)
    assert value(during, "fedavg_training_active") == 1
    assert 1 <= value(during, "fedavg_rounds_completed_total") < 3
    assert value(after, "fedavg_rounds_completed_total") == 3
    assert value(after, "fedavg_training_active") == 0
    assert value(after, "fedavg_uploads_accepted_total") == 6
    assert value(after, "fedavg_round_duration_seconds_count") == 3
    assert value(after, "fedavg_aggregation_duration_seconds_count") == 6
    assert 0.5 < value(after, "fedavg_global_accuracy") <= 1
    assert value(after, 'fedavg_bytes_received_total{kind="weights"}') > 6 * 900_000
    assert value(after, 'fedavg_bytes_sent_total{kind="shard"}') > 0


@pytest.mark.parametrize("cluster", [{"WANDB_MODE": "offline"}], indirect=True)
def test_wandb_offline_runs_hold_the_per_round_metrics(cluster: LocalCluster) -> None:
    job = cluster.request("POST", "/train/mnist?epochs=2&strategy=fedavgm&server_momentum=0.5")
    status = cluster.wait_job(timeout=180)
    assert status["state"] == "completed"
    cluster.stop()  # W&B writes the run's end when the programs exit

    runs = list(cluster.home.rglob("offline-run-*/run-*.wandb"))
    infos = {path: run_info(path) for path in runs}
    server = [p for p, info in infos.items() if info["job_type"] == "server"]
    nodes = [p for p, info in infos.items() if info["job_type"] == "node"]
    assert len(server) == 1 and len(nodes) == 2, infos
    assert all(info["group"] == job["job_id"] for info in infos.values())
    config = run_config(server[0])  # what a reader compares runs by
    assert config["server_opt"] == status["server_opt"]
    assert config["server_opt"]["strategy"] == "fedavgm"
    assert config["partition"] == "iid"
    assert config["model"]["arch"] == status["model"]["arch"]
    assert config["train"] == status["train"]

    rows = [r for r in history(server[0]) if "global/test_accuracy" in r]
    assert [r["_step"] for r in rows] == [1, 2]
    expected = [h["test_accuracy"] for h in status["history"]]
    assert [r["global/test_accuracy"] for r in rows] == pytest.approx(expected)
    for path in nodes:
        local = [r for r in history(path) if "local/train_loss" in r]
        assert [r["_step"] for r in local] == [1, 2]
        assert all(0 <= r["local/val_accuracy"] <= 1 for r in local)


@pytest.mark.parametrize("cluster", [{"FEDAVG_HEARTBEAT": "1"}], indirect=True)
async def test_a_dashboard_that_never_reads_is_dropped_and_rounds_close_on_time(
    cluster: LocalCluster,
) -> None:
    # A raw WebSocket client with a tiny receive buffer that never reads a byte after the
    # handshake, so it never answers the heartbeat's ping either.
    stalled = socket.create_connection(("127.0.0.1", cluster.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET /ws/dashboard HTTP/1.1\r\nHost: 127.0.0.1:{cluster.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    stalled.sendall(handshake.encode())
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(cluster.url + "/ws/dashboard") as ws,
        ):
            await ws.receive()
            assert value(scrape(cluster), "fedavg_dashboard_clients") == 2
            cluster.request("POST", "/train/mnist?epochs=3")
            closed = [await next_event(ws, "round_closed") for _ in range(3)]
            await next_event(ws, "job_done")
        # Each round closed as soon as both uploads were in, never at the 120 s deadline.
        assert all(not e["data"]["partial"] and e["data"]["seconds"] < 30 for e in closed)  # type: ignore[index]
        # Dropped by the heartbeat (a ping unanswered) or its full queue, whichever comes
        # first; a fast job may end before either has fired.
        async with asyncio.timeout(30):
            while True:
                if value(scrape(cluster), "fedavg_dashboard_clients") == 0:
                    break
                await asyncio.sleep(0.2)
        server_log = (cluster.log_dir / "server.log").read_text()
        assert "dashboard_closed" in server_log
    finally:
        stalled.close()
