"""Heterogeneous data with the real programs: a Dirichlet split, FedProx on the nodes and
FedAdam on the server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from server.demo.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


def test_a_dirichlet_job_with_fedadam_and_fedprox_completes_and_shows_the_labels(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(FEDAVG_MAX_BATCHES="8")
    for i in range(1, 4):
        cluster.start_node(f"node-{i}", threads=1)
    cluster.wait_nodes(3)
    cluster.request("POST", "/datasets/mnist/prepare")
    body = {
        "rounds": 3,
        "partition": "dirichlet:0.5",
        "train": {"proximal_mu": 0.01},
        "strategy": "fedadam",
        "server_lr": 0.05,
    }
    job = cluster.request("POST", "/train/mnist", body=body)
    assert (job["partition"], job["train"]["proximal_mu"]) == ("dirichlet:0.5", 0.01)
    assert job["server_opt"] == {
        "strategy": "fedadam",
        "server_lr": 0.05,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
    }
    status = cluster.wait_job(timeout=300)

    assert status["state"] == "completed", status
    assert status["partition"] == "dirichlet:0.5"
    assert [len(h["contributors"]) for h in status["history"]] == [3, 3, 3]
    # Every node trained on its own mix of labels, which /nodes and the run record show.
    nodes = cluster.request("GET", "/nodes")["nodes"]
    mixes = [n["shard_labels"] for n in nodes]
    assert all(sum(m) == n["shard_samples"] for m, n in zip(mixes, nodes, strict=True))
    assert len({tuple(m) for m in mixes}) == 3
    (run,) = cluster.request("GET", "/runs")["runs"]
    assert run["config"]["partition"] == "dirichlet:0.5"
    assert run["config"]["train"]["proximal_mu"] == 0.01
    assert run["config"]["server_opt"]["strategy"] == "fedadam"
    own = sum(s["own"] for s in run["config"]["shards"].values())
    assert own == 4000  # every training sample reached some node
