"""The orchestrator dies (SIGKILL) mid-job and restarts on the same FEDAVG_HOME: it resumes
from the last closed round, nodes reconnect by themselves, nothing is lost or repeated, and
no half-written file is ever read as a model."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from node.shared.weights import decode_weights
from server.demo.local_cluster import ClusterError, LocalCluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # Nodes retry at most every 2 s, so they find the restarted server quickly.
    env = {
        "FEDAVG_MNIST_DOWNLOAD": "false",
        "EPOCH_SYNC_TIMEOUT": "60",
        "FEDAVG_RECONNECT_MAX": "2",
    }
    with LocalCluster(home=tmp_path / "home", port=free_port(), env=env) as c:
        yield c


def start_nodes(cluster: LocalCluster, count: int) -> None:
    for i in range(1, count + 1):
        cluster.start_node(f"node-{i}", threads=1)
    cluster.wait_nodes(count)
    cluster.request("POST", "/datasets/prepare-mnist")


def wait_for_exit(cluster: LocalCluster, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while cluster.server.alive():
        if time.monotonic() > deadline:
            raise ClusterError("the failpoint never fired")
        time.sleep(0.1)


def check_models_are_whole(home: Path) -> list[Path]:
    """Every *.safetensors in models/ parses and validates; temp files are never models.
    Returns the final models (each job also saves its best round's)."""
    models = sorted((home / "models").glob("*.safetensors"))
    for path in models:
        decode_weights(path.read_bytes())
    return [p for p in models if not p.name.endswith(".best.safetensors")]


def timeline_kinds(home: Path) -> list[str]:
    with sqlite3.connect(home / "fedavg.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT kind FROM events ORDER BY id")]


async def test_killed_orchestrator_resumes_at_the_last_closed_round(cluster: LocalCluster) -> None:
    cluster.start_server()
    cluster.wait_healthy()
    start_nodes(cluster, 3)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        await ws.receive()
        # FedAdam: its moments must come back with the weights.
        job = cluster.request("POST", "/train/mnist?epochs=5&strategy=fedadam")
        async for msg in ws:
            event = json.loads(msg.data)
            if event["kind"] == "round_closed" and event["data"]["round"] == 2:
                cluster.kill("server", signal.SIGKILL)
                break
    cluster.start_server()
    cluster.wait_healthy()
    status = cluster.wait_job(timeout=240)

    assert status["run_id"] == job["job_id"]
    assert status["state"] == "completed", status
    assert [h["round"] for h in status["history"]] == [1, 2, 3, 4, 5]  # none lost, none repeated
    [model] = check_models_are_whole(cluster.home)
    _, meta = decode_weights(model.read_bytes())
    assert meta.extra["rounds"] == "5" and len(json.loads(meta.extra["contributors"])) == 5
    assert json.loads(meta.extra["server_opt"])["strategy"] == "fedadam"
    run_dir = cluster.home / "runs" / job["job_id"]
    assert sorted(p.name for p in run_dir.glob("*.optimizer.safetensors")) == [
        f"round-{r:04d}.optimizer.safetensors" for r in range(1, 6)
    ]
    kinds = timeline_kinds(cluster.home)
    assert "server_restarted" in kinds and "job_resumed" in kinds
    assert kinds.index("job_resumed") > kinds.index("server_restarted")
    # The nodes reconnected by themselves and trained the rounds after the restart.
    resumed = [h for h in status["history"] if h["round"] > 2]
    assert all(len(h["contributors"]) >= 1 for h in resumed)
    assert sorted(resumed[-1]["contributors"]) == ["node-1", "node-2", "node-3"]


@pytest.mark.parametrize(
    "point",
    [
        "upload.mid_body@3",
        "aggregation.after_fold@2",
        "checkpoint.before_rename@3",
        "checkpoint.before_commit@2",
        "final_model.before_rename",
        "final_model.before_commit",
    ],
)
def test_crash_at_each_step_boundary_restarts_consistent_and_resumable(
    cluster: LocalCluster, point: str
) -> None:
    cluster.start_server(env={"FEDAVG_FAILPOINTS": point})
    cluster.wait_healthy()
    start_nodes(cluster, 2)
    job = cluster.request("POST", "/train/mnist?epochs=3")
    cluster.server.expect_exit = True
    wait_for_exit(cluster)
    assert cluster.server.popen.returncode == -signal.SIGKILL
    check_models_are_whole(cluster.home)  # whatever the crash left, nothing torn reads as a model

    cluster.start_server()
    cluster.wait_healthy()
    status = cluster.wait_job(timeout=240)
    assert status["run_id"] == job["job_id"] and status["state"] == "completed", status
    assert [h["round"] for h in status["history"]] == [1, 2, 3]
    [model] = check_models_are_whole(cluster.home)
    assert not list(cluster.home.rglob(".*.tmp"))
    _, meta = decode_weights(model.read_bytes())
    assert meta.extra["run_id"] == job["job_id"] and meta.extra["rounds"] == "3"


def test_after_a_restart_the_views_show_the_last_job_not_idle(cluster: LocalCluster) -> None:
    cluster.start_server()
    cluster.wait_healthy()
    start_nodes(cluster, 1)
    job = cluster.request("POST", "/train/mnist?epochs=1")
    done = cluster.wait_job(timeout=120)
    assert done["state"] == "completed"
    cluster.kill("server", signal.SIGTERM)
    cluster.start_server()
    cluster.wait_healthy()
    status = cluster.request("GET", "/sync/status")
    assert (status["state"], status["run_id"]) == ("completed", job["job_id"])
    assert status["history"] == done["history"]
    assert status["model_url"] == done["model_url"]
    assert status["final_accuracy"] == done["final_accuracy"]
    overview = cluster.request("GET", "/monitor/overview")
    assert overview["progress"]["rounds_closed"] == 1
