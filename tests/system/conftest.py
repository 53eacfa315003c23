"""The fixture every real-process system test starts from: a fresh orchestrator process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.demo.local_cluster import LocalCluster, free_port


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """``make_cluster(**env)``: a healthy ``fedavg-server`` on a free port, with its own home
    and ``env`` added; offline MNIST, nodes that retry every 2 s. Stopped by PID at the end."""
    clusters: list[LocalCluster] = []

    def make(**env: str) -> LocalCluster:
        cluster = LocalCluster(
            home=tmp_path / f"home{len(clusters)}",
            port=free_port(),
            env={"FEDAVG_MNIST_DOWNLOAD": "false", "FEDAVG_RECONNECT_MAX": "2", **env},
        )
        clusters.append(cluster)
        cluster.start_server()
        cluster.wait_healthy()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
