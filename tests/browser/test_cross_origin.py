"""A web page on another origin, in Debian's Chromium, against a real ``fedavg-server``: it can
start, stop or prepare nothing and open neither WebSocket, with the tokens set or unset. The
dashboard the server serves itself (same origin) still can.

The hostile page is served by a second HTTP server on another loopback port, so the browser
treats it as a foreign site exactly as it would a page on the internet.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Response, expect

from server.demo.local_cluster import LocalCluster, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TOKENS = {"FEDAVG_ADMIN_TOKEN": "s3cret-admin-token", "FEDAVG_NODE_TOKEN": "s3cret-node-token"}
STATE_CHANGING = (
    "/datasets/prepare-mnist",
    "/train/mnist/prepare",
    "/train/mnist?epochs=1000",
    "/jobs/stop",
    "/sync/weights?job=x&round=1&samples=1",
)
# Run in the page: every simple (no-preflight) POST a page may send, then both sockets;
# returns what each socket saw: "open", "error", "close".
ATTACK_JS = """async ({base, paths}) => {
    for (const path of paths) {
        for (const init of [{}, {headers: {"Content-Type": "text/plain"}, body: "x"}]) {
            try {
                await fetch(base + path, {method: "POST", mode: "no-cors", ...init});
            } catch (err) {}
        }
    }
    const socket = (path) => new Promise((resolve) => {
        const seen = [];
        const ws = new WebSocket(base.replace("http", "ws") + path);
        ws.onopen = () => { seen.push("open"); ws.close(); };
        ws.onerror = () => seen.push("error");
        ws.onclose = () => { seen.push("close"); resolve(seen); };
        setTimeout(() => resolve([...seen, "timeout"]), 10000);
    });
    return {node: await socket("/ws/node"), dashboard: await socket("/ws/dashboard")};
}"""
HARMLESS_PAGE = b"<!doctype html><meta charset=utf-8><title>a page</title><p>Nothing here."


@pytest.fixture
def foreign_origin() -> Iterator[str]:
    """A second web server on another loopback port: a different origin for the browser."""

    class OnePage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(HARMLESS_PAGE)))
            self.end_headers()
            self.wfile.write(HARMLESS_PAGE)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OnePage)
    thread = threading.Thread(target=server.serve_forever, name="foreign-origin", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _cluster(tmp_path: Path, tokens: bool) -> LocalCluster:
    env = {"FEDAVG_MNIST_DOWNLOAD": "false", **(TOKENS if tokens else {})}
    return LocalCluster(home=tmp_path / "home", port=free_port(), env=env)


def event_kinds(cluster: LocalCluster) -> list[str]:
    with sqlite3.connect(cluster.home / "fedavg.sqlite3") as db:
        return [kind for (kind,) in db.execute("SELECT kind FROM events ORDER BY id")]


def post_statuses(page: Page, origin: str) -> list[tuple[str, int]]:
    """(path, status) of every POST the page sends to ``origin``, as the network saw it."""
    seen: list[tuple[str, int]] = []

    def on_response(response: Response) -> None:
        if response.request.method == "POST" and response.url.startswith(origin):
            seen.append((response.url[len(origin) :], response.status))

    page.on("response", on_response)
    return seen


@pytest.mark.parametrize("tokens", [False, True], ids=["tokens-unset", "tokens-set"])
def test_a_foreign_page_can_neither_control_nor_connect(
    page: Page,
    offline_guard: list[str],
    foreign_origin: str,
    tmp_path: Path,
    tokens: bool,
) -> None:
    with _cluster(tmp_path, tokens) as cluster:
        cluster.start_server()
        cluster.wait_healthy()
        page.goto(foreign_origin + "/")
        statuses = post_statuses(page, cluster.url)

        seen = page.evaluate(ATTACK_JS, {"base": cluster.url, "paths": list(STATE_CHANGING)})

        # The requests reached the server, and it refused each one before any handler ran.
        assert sorted(statuses) == sorted((p, 403) for p in STATE_CHANGING for _ in range(2))
        # Both upgrades were refused (403) before the handshake: no socket ever opened.
        assert seen == {"node": ["error", "close"], "dashboard": ["error", "close"]}, seen
        assert cluster.request("GET", "/datasets")["datasets"] == []
        assert cluster.request("GET", "/sync/status")["state"] == "idle"
        assert cluster.request("GET", "/nodes")["nodes"] == []
        kinds = event_kinds(cluster)
        for kind in ("dataset_prepared", "job_started", "job_stopped", "node_joined"):
            assert kind not in kinds, kinds
    assert offline_guard == []


def test_the_dashboard_page_itself_still_controls_and_connects(
    page: Page, offline_guard: list[str], tmp_path: Path
) -> None:
    """The same attack from the server's own origin works: the refusals above are the guard's."""
    with _cluster(tmp_path, tokens=False) as cluster:
        cluster.start_server()
        cluster.wait_healthy()
        page.goto(cluster.url + "/")
        expect(page.locator("#conn")).to_have_text("live")  # its own /ws/dashboard
        statuses = post_statuses(page, cluster.url)

        seen = page.evaluate(ATTACK_JS, {"base": cluster.url, "paths": ["/datasets/prepare-mnist"]})

        # Same origin: the bodiless POST is served; a text/plain body is refused all the same.
        assert sorted(statuses) == [
            ("/datasets/prepare-mnist", 200),
            ("/datasets/prepare-mnist", 415),
        ]
        assert seen["dashboard"] == ["open", "close"], seen
        assert seen["node"] == ["open", "close"], seen
        datasets = cluster.request("GET", "/datasets")["datasets"]
        assert [d["dataset_id"] for d in datasets] == ["mnist"]
        assert "dataset_prepared" in event_kinds(cluster)
    assert offline_guard == []
