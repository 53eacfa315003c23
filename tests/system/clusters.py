"""Helpers for the system tests' clusters (the fixture is in conftest.py)."""

from __future__ import annotations

from server.demo.local_cluster import LocalCluster


def prepare(cluster: LocalCluster, *names: str, node_args: tuple[str, ...] = ()) -> None:
    """Start one single-threaded node per name (its id is its name), wait until all are
    connected, and prepare MNIST."""
    for name in names:
        cluster.start_node(name, *node_args, threads=1)
    cluster.wait_nodes(len(names))
    cluster.request("POST", "/datasets/prepare-mnist")
