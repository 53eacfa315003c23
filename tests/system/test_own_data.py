"""A real node with data of its own: it reads the data at start-up and tells the real
orchestrator what it holds (schema, counts, fingerprint), and no sample crosses the wire."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.demo.local_cluster import LocalCluster
from tests.node.shared.data_files import labelled_arrays, write_idx_pair, write_image_folder

pytestmark = pytest.mark.slow


def test_a_node_announces_its_own_data_to_the_orchestrator(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    pets = write_image_folder(tmp_path / "pets", {"cat": 10, "dog": 5}, size=(8, 8))
    x, y = labelled_arrays(50, (28, 28), classes=10)
    digits = write_idx_pair(tmp_path / "digits", x, y, gz=True)
    cluster.start_node(
        "a", "--capacity", "100", "--data", f"pets={pets}", "--data", f"digits={digits}"
    )
    cluster.start_node("b", "--capacity", "100", "--share-label-counts", "--data", f"pets={pets}")
    cluster.wait_nodes(2)
    deadline = time.monotonic() + 60
    while True:
        rows = {n["node_id"]: n for n in cluster.request("GET", "/nodes")["nodes"]}
        if all(len(rows[n]["own_data"]) == want for n, want in (("a", 2), ("b", 1))):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    a_pets, a_digits = rows["a"]["own_data"]
    (b_pets,) = rows["b"]["own_data"]
    assert a_pets["name"] == "pets" and a_pets["input_shape"] == [3, 8, 8]
    assert a_pets["class_names"] == ["cat", "dog"]
    assert (a_pets["train_samples"], a_pets["test_samples"]) == (12, 3)
    assert a_digits["input_shape"] == [1, 28, 28] and a_digits["num_classes"] == 10
    assert a_digits["train_samples"] + a_digits["test_samples"] == 50
    # The same data on two nodes has one fingerprint; counts only where the owner allows.
    assert a_pets["fingerprint"] == b_pets["fingerprint"]
    assert "label_counts" not in a_pets and b_pets["label_counts"] == [8, 4]
