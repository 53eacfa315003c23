"""Each node's label distribution on the dashboard, in Debian's Chromium, against the real
orchestrator and three nodes.

A 1-round job with ``partition=dirichlet:0.1`` (started from the page's own form) gives the
nodes skewed shards; each row's bar must show the node's ``shard_labels`` from ``/nodes``:
one segment per class it holds, as wide as its share, in that class's colour on every row,
with the shares in words for screen readers. The run panel names the partition.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Page, expect

from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import texts_seen, watch_text

pytestmark = [pytest.mark.slow, pytest.mark.browser]

NODES = ("node-1", "node-2", "node-3")
PARTITION = "dirichlet:0.1"

# Each row's bar as drawn: its data, its accessible text, and every segment's class, count,
# colour and rendered width.
READ_BARS = """() => Object.fromEntries([...document.querySelectorAll("#nodes-body tr")].map(
  (tr) => {
    const bar = tr.querySelector(".dist");
    const box = bar.getBoundingClientRect();
    return [tr.dataset.nodeId, {
        hidden: bar.hidden,
        labels: bar.dataset.labels ?? null,
        aria: bar.getAttribute("aria-label"),
        role: bar.getAttribute("role"),
        width: box.width,
        segments: [...bar.children].map((seg) => ({
            label: Number(seg.dataset.label),
            count: Number(seg.dataset.count),
            colour: getComputedStyle(seg).backgroundColor,
            width: seg.getBoundingClientRect().width,
        })),
    }];
  },
))"""


def share_text(count: int, total: int) -> str:
    """A share as the page words it (labels.js shareText)."""
    percent = count / total * 100
    return "0%" if count == 0 else "<1%" if percent < 1 else f"{round(percent)}%"


def expected_aria(counts: list[int], names: list[str]) -> str:
    total = sum(counts)
    shares = [f"{names[k]}: {share_text(c, total)}" for k, c in enumerate(counts) if c > 0]
    return "label shares " + ", ".join(shares)


def labelled_nodes(cluster: LocalCluster, timeout: float = 60.0) -> dict[str, list[int]]:
    """node name -> shard_labels from GET /nodes, once every node has its shard."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = cluster.request("GET", "/nodes")["nodes"]
        labels = {n["name"]: n["shard_labels"] for n in nodes}
        if set(labels) == set(NODES) and all(labels.values()):
            for n in nodes:
                assert sum(n["shard_labels"]) == n["shard_samples"], n
            return labels
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes without shard_labels: {nodes}")
        time.sleep(0.2)


def check_bars(page: Page, labels: dict[str, list[int]], names: list[str]) -> None:
    """Every row's bar is the node's histogram: segments, widths, colours and words."""
    for name, counts in labels.items():  # the page has caught up with /nodes
        bar = page.locator(f'#nodes-body tr[data-node-id="{name}"] .dist')
        expect(bar).to_have_attribute("data-labels", ",".join(map(str, counts)))
    bars = page.evaluate(READ_BARS)
    colours: dict[int, set[str]] = {}
    for name, counts in labels.items():
        bar = bars[name]
        assert not bar["hidden"] and bar["role"] == "img" and bar["width"] > 50, bar
        assert bar["aria"] == expected_aria(counts, names), (name, bar["aria"], counts)
        held = [(k, c) for k, c in enumerate(counts) if c > 0]
        assert [(s["label"], s["count"]) for s in bar["segments"]] == held, (name, bar)
        drawn = sum(s["width"] for s in bar["segments"])
        assert drawn == pytest.approx(bar["width"], abs=1.0), bar  # the bar is full
        total = sum(counts)
        for seg in bar["segments"]:
            assert seg["width"] / drawn == pytest.approx(seg["count"] / total, abs=0.01), (
                name,
                seg,
                counts,
            )
            colours.setdefault(seg["label"], set()).add(seg["colour"])
    # One colour per class, the same on every row, and ten classes in ten colours.
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len(colours) == len(names)
    assert len({next(iter(c)) for c in colours.values()}) == len(names), colours


def test_each_row_shows_its_label_distribution_and_the_run_panel_the_partition(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    cluster: LocalCluster,
    artifacts_dir: Path,
) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(cluster.url + "/")
    expect(page.locator("#conn")).to_have_text("live")
    for name in NODES:
        cluster.start_node(name, threads=1)
    expect(page.locator("#nodes-body tr")).to_have_count(len(NODES), timeout=60_000)
    # No shard yet: no bar.
    expect(page.locator("#nodes-body .dist")).to_have_count(len(NODES))
    expect(page.locator("#nodes-body .dist:visible")).to_have_count(0)

    message = page.locator("#control-message")
    page.get_by_role("button", name="Prepare", exact=True).click()
    expect(message).to_have_text(re.compile(r"ready from"), timeout=30_000)
    prepared = cluster.request("GET", "/datasets")["datasets"]
    names = next(d for d in prepared if d["dataset_id"] == "mnist")["class_names"]
    assert len(names) == 10

    page.get_by_label("Partition", exact=True).fill(PARTITION)
    page.locator("#epochs").fill("1")
    watch_text(page, "control-message")
    with page.expect_request(lambda r: "/train/" in r.url and r.method == "POST") as sent:
        page.get_by_role("button", name="Start job").click()
    assert parse_qs(urlparse(sent.value.url).query) == {"epochs": ["1"], "partition": [PARTITION]}
    # One quick round: "started" may already have given way to "completed".
    expect(message).to_have_text(re.compile(r" (started: |completed)"), timeout=30_000)
    started = re.compile(rf" started: .*, partition {re.escape(PARTITION)}\.$")
    assert any(started.search(t) for t in texts_seen(page, "control-message"))
    status = cluster.request("GET", "/sync/status")
    assert status["partition"] == PARTITION
    partition = page.locator("#run-partition")
    expect(partition).to_have_text(f"Partition {PARTITION}")
    expect(partition).to_have_attribute("title", re.compile(r"Dirichlet\(0\.1\)"))

    # The bars arrived live (shards_planned; the page never reloaded) and match /nodes.
    labels = labelled_nodes(cluster)
    check_bars(page, labels, names)
    # alpha = 0.1 is skewed: some node holds a class at twice an IID tenth or more.
    assert max(c / sum(counts) for counts in labels.values() for c in counts) > 0.2, labels
    page.screenshot(path=str(artifacts_dir / "dashboard-labels.png"), full_page=True)

    expect(page.locator("#run-state")).to_have_text("completed", timeout=90_000)
    expect(partition).to_have_text(f"Partition {PARTITION}")  # kept after the end

    # A fresh page draws the same bars and partition from the snapshot alone.
    page.reload()
    expect(page.locator("#conn")).to_have_text("live")
    check_bars(page, labelled_nodes(cluster), names)
    expect(partition).to_have_text(f"Partition {PARTITION}")
    assert offline_guard == []
    assert page_errors == []


def test_a_bad_partition_gets_the_servers_message_and_no_job(
    page: Page, offline_guard: list[str], page_errors: list[str], cluster: LocalCluster
) -> None:
    cluster.request("POST", "/datasets/mnist/prepare")
    page.goto(cluster.url + "/")
    expect(page.locator("#conn")).to_have_text("live")
    # The request is checked before any shard is planned: no node is needed for the 400.
    page.get_by_label("Partition", exact=True).fill("dirichlet:zero")
    with page.expect_response(lambda r: "/train/" in r.url) as answer:
        page.get_by_role("button", name="Start job").click()
    assert answer.value.status == 400
    server_message = answer.value.json()["error"]["message"]
    assert server_message.startswith("partition")
    expect(page.locator("#control-message")).to_have_text(f"{server_message} (HTTP 400)")
    expect(page.locator("#run-partition")).to_have_text("")
    assert cluster.request("GET", "/sync/status")["state"] == "idle"
    assert offline_guard == []
    refused = re.compile(r"^Failed to load resource: .* status of 400 ")
    assert [e for e in page_errors if not refused.match(e)] == []
