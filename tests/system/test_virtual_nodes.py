"""Virtual nodes over the real protocol: two ``fedavg-node --virtual 50`` processes are 100
nodes to a real orchestrator, and a sampled job's rounds (McMahan et al.'s C = 0.1) train
the nodes the seed picks."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from server.core.sampling import Sampling, sample_nodes
from server.demo.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

PROCESSES = ("alpha", "beta")
PER_PROCESS = 50
FRACTION = 0.1
PICKED = 10  # ceil(0.1 * 100)


def start_virtual_nodes(cluster: LocalCluster, *extra: str) -> list[dict[str, Any]]:
    """Both processes' virtual nodes, connected, and the dataset prepared: /nodes' rows."""
    for name in PROCESSES:
        virtual = ("--virtual", str(PER_PROCESS), "--virtual-workers", "2")
        cluster.start_node(name, *virtual, *extra, threads=1)
    cluster.wait_nodes(len(PROCESSES) * PER_PROCESS)
    cluster.request("POST", "/datasets/prepare-mnist")
    return [n for n in cluster.request("GET", "/nodes")["nodes"] if n["connected"]]


def opened_rounds(cluster: LocalCluster, job_id: str) -> list[tuple[int, list[str]]]:
    """Each ``round_opened`` event of the job, oldest first: its round and its sample."""
    events = cluster.request("GET", "/monitor/timeline?limit=1000")["events"]
    return [
        (e["data"]["round"], e["data"]["sampled"])
        for e in reversed(events)
        if e["kind"] == "round_opened" and e["run_id"] == job_id
    ]


def seeded_sample(names: dict[str, str], job_id: str, round_: int) -> list[str]:
    """What the seed says round ``round_`` trains: 10 % of all the nodes, by name."""
    picked = sample_nodes(names, Sampling(FRACTION, 1), seed=0, job_id=job_id, round_=round_)
    assert len(picked) == PICKED
    return sorted(names[node_id] for node_id in picked)


def test_two_processes_of_fifty_virtual_nodes_train_the_seeded_sample(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(FEDAVG_MAX_BATCHES="3")
    nodes = start_virtual_nodes(cluster)
    names = {n["node_id"]: n["name"] for n in nodes}
    expected_ids = {f"{p}-v{i:03d}" for p in PROCESSES for i in range(PER_PROCESS)}
    assert len(nodes) == 100 and set(names) == expected_ids  # distinct, as if 100 processes
    assert set(names.values()) == expected_ids  # --name alpha: names alpha-v000, ...
    for process in PROCESSES:  # measured once a process, announced by each of its nodes
        assert len({n["capacity"] for n in nodes if n["name"].startswith(process)}) == 1

    job = cluster.request("POST", f"/train/mnist?epochs=5&fraction={FRACTION}")
    status = cluster.wait_job(timeout=240)
    assert status["state"] == "completed", status

    opened = opened_rounds(cluster, job["job_id"])
    assert opened == [(r, seeded_sample(names, job["job_id"], r)) for r in range(1, 6)]
    history: list[dict[str, Any]] = status["history"]
    assert [(h["round"], sorted(h["contributors"])) for h in history] == opened

    # SIGTERM: each process's agents all say goodbye, and it exits cleanly.
    for proc in [p for p in cluster.procs if p.name in PROCESSES]:
        proc.expect_exit = True
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0, proc.log_tail()
    nodes = cluster.request("GET", "/nodes")["nodes"]
    assert len(nodes) == 100 and not any(n["connected"] for n in nodes)


def test_a_restart_mid_round_keeps_the_sampling_sequence(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    # The 21st upload folded is round 3's first (10 a round): the server dies with it open.
    cluster = make_cluster(FEDAVG_MAX_BATCHES="3", FEDAVG_FAILPOINTS="aggregation.after_fold@21")
    nodes = start_virtual_nodes(cluster, "--capacity", "1000")  # no measuring: a quicker start
    names = {n["node_id"]: n["name"] for n in nodes}
    job = cluster.request("POST", f"/train/mnist?epochs=3&fraction={FRACTION}")
    cluster.server.expect_exit = True
    cluster.server.popen.wait(timeout=120)
    assert cluster.server.popen.returncode == -signal.SIGKILL

    cluster.start_server(env={"FEDAVG_FAILPOINTS": ""})  # disarmed
    cluster.wait_healthy()
    status = cluster.wait_job(timeout=240)
    assert status["run_id"] == job["job_id"] and status["state"] == "completed", status

    # The rounds not yet settled when it died were opened again, each with the seeded sample.
    seeded = {r: seeded_sample(names, job["job_id"], r) for r in (1, 2, 3)}
    opened = opened_rounds(cluster, job["job_id"])
    assert len(opened) > 3 and all(sampled == seeded[r] for r, sampled in opened), opened
    assert {h["round"]: sorted(h["contributors"]) for h in status["history"]} == seeded
