"""The dashboard with 100 nodes and client sampling, in Debian's Chromium: the nodes each
round picks are marked (as /sync/status names them), the others idle "not sampled", virtual
nodes group under their process, the table pages, the node-loss chart caps its lines, and
the page keeps up with the progress frames.

A real ``fedavg-server`` runs a sampled job (``fraction=0.1``) over 100 hand-made nodes that
speak the real protocol from one asyncio loop in a thread, named as two ``--virtual 50``
processes would name theirs. A picked node reports progress at the protocol's 10 a second,
then uploads the weights it was given. The last round's uploads wait until the test has read
the page, so the round on show is the one the API describes. What the page spent on the
snapshot and the events is printed for the log, never asserted on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from node.shared.protocol import Done, Progress, Train, WeightsReady, encode
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import OFFLINE, open_dashboard, running_cluster
from tests.system.hostile import FakeNode

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PROCESSES = ("fleet-a", "fleet-b")  # as two `fedavg-node --virtual 50` would name their nodes
PER_PROCESS = 50
NODES = len(PROCESSES) * PER_PROCESS
ROUNDS = 2
BATCHES = 10  # progress frames a picked node sends each round, at the protocol's 10 a second
# Sockets stay quiet while the last round is held: no heartbeat may drop them meanwhile.
ENV = {**OFFLINE, "FEDAVG_HEARTBEAT": "120"}

# The page's own figures for the log: the snapshot's render, the node table's first rows
# and re-plans, the events' handling, and the browser's first contentful paint.
TIMINGS = """() => {
    const { timings, views } = window.__dashboard;
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    return { ...timings, table: { ...views.nodes.stats }, fcp: paint ? paint.startTime : null };
}"""
# The names of the rows on show that match a selector.
NAMES_ON_PAGE = """(selector) => [...document.querySelectorAll(`#nodes-body tr${selector}`)]
    .map((tr) => tr.querySelector("strong").textContent)"""
PICKED = '[data-picked="true"]'
NOT_SAMPLED = '[data-state="not_sampled"]'


class Fleet:
    """100 protocol clients on one asyncio loop in a thread. Each joins, idles while not
    picked, and when picked reports BATCHES progress frames and uploads the weights it was
    given (one sample). Uploads of round ``hold`` wait for :meth:`release`."""

    def __init__(self, url: str, hold: int) -> None:
        self.url, self.hold = url, hold
        self.names = [f"{p}-v{i:03d}" for p in PROCESSES for i in range(PER_PROCESS)]
        self.joined = threading.Event()
        self.held: set[str] = set()  # picked nodes waiting at the held round
        self.uploads: list[tuple[str, int, int]] = []  # (name, round, HTTP status)
        self.errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self.joined.wait(60), self.errors

    def release(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def stop(self) -> None:
        self.release()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._release, self._stop = asyncio.Event(), asyncio.Event()
        nodes = [FakeNode(self.url, name) for name in self.names]
        try:
            for i in range(0, NODES, 20):  # a few at a time: under the per-peer pending limit
                await asyncio.gather(*(node.join() for node in nodes[i : i + 20]))
            self.joined.set()
            workers = [asyncio.create_task(self._serve(node)) for node in nodes]
            await self._stop.wait()
            for worker in workers:
                worker.cancel()
            results = await asyncio.gather(*workers, return_exceptions=True)
            self.errors += [r for r in results if isinstance(r, Exception)]
        except Exception as exc:  # the test reads it: a join that failed says why
            self.errors.append(exc)
            self.joined.set()
        finally:
            await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)

    async def _serve(self, node: FakeNode) -> None:
        """Every round the server asks this node to train, until the job is done."""
        while True:
            frame = await node.wait_for(Train | WeightsReady | Done, within=300)  # type: ignore[arg-type]
            if isinstance(frame, Done):
                return
            if isinstance(frame, Train):
                await self._train(node, frame, frame.round, frame.weights_url)
            elif node.train is not None and frame.round < node.train.rounds:
                await self._train(node, node.train, frame.round + 1, frame.url)

    async def _train(self, node: FakeNode, train: Train, round_: int, url: str) -> None:
        status, body = await node.get(url)
        assert status == 200, (node.node_id, url, status)
        state, meta = decode_weights(bytearray(body))
        for batch in range(1, BATCHES + 1):
            loss = 2.3 - 0.1 * batch - 0.3 * round_
            await node.send_text(encode(Progress(train.job_id, round_, batch, BATCHES, loss)))
            await asyncio.sleep(0.1)
        if round_ == self.hold:
            self.held.add(node.node_id)
            assert self._release is not None
            await self._release.wait()
        data = bytes(encode_weights(state, WeightsMeta(meta.spec, round_, train.job_id)))
        code, _ = await node.upload(train.job_id, round_, 1, data)
        self.uploads.append((node.node_id, round_, code))


@contextmanager
def running_fleet(url: str, hold: int) -> Iterator[Fleet]:
    fleet = Fleet(url, hold)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def wait_held_round(cluster: LocalCluster, fleet: Fleet, timeout: float = 60) -> dict[str, Any]:
    """Until the held round is open and each node it picked has sent its progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = cluster.request("GET", "/sync/status")
        sampled = status.get("sampled") or []
        if status["round"] == fleet.hold and status["round_open"] and set(sampled) == fleet.held:
            return status
        time.sleep(0.2)
    raise AssertionError(f"round {fleet.hold} never opened with its pick held: {fleet.errors}")


def log_timings(page: Page, when: str) -> dict[str, Any]:
    """The page's figures, printed for the test's log (never asserted on as durations)."""
    figures: dict[str, Any] = page.evaluate(TIMINGS)
    table, events = figures["table"], max(figures["events"], 1)
    print(
        f"[many nodes, {when}] first contentful paint {figures['fcp']} ms;"
        f" snapshot handled in {figures['snapshotMs']:.1f} ms;"
        f" first node rows at {table['firstRowsAt']:.0f} ms after navigation;"
        f" last re-plan {table['planMs']:.1f} ms; {figures['events']} events in"
        f" {figures['eventMs']:.1f} ms (mean {figures['eventMs'] / events:.3f} ms,"
        f" slowest {figures['eventMaxMs']:.1f} ms); the table drew {table['frames']} frames,"
        f" {table['plans']} re-plans, {table['fills']} row fills"
    )
    return figures


def all_pages(page: Page, selector: str) -> list[str]:
    """The names of the rows matching ``selector`` on every page of the table."""
    while page.locator("#nodes-prev").is_enabled() and page.locator("#nodes-pager").is_visible():
        page.locator("#nodes-prev").click()
    names: list[str] = list(page.evaluate(NAMES_ON_PAGE, selector))
    while page.locator("#nodes-pager").is_visible() and page.locator("#nodes-next").is_enabled():
        page.locator("#nodes-next").click()
        expect(page.locator("#nodes-body tr").first).to_be_attached()
        names += page.evaluate(NAMES_ON_PAGE, selector)
    return names


def check_groups(page: Page, sampled: list[str]) -> None:
    """Two folded processes of 50, each summary counting its picked nodes."""
    groups = page.locator("#nodes-body tr.group-row")
    expect(groups).to_have_count(len(PROCESSES))
    expect(page.locator("#nodes-body tr.node-row")).to_have_count(0)
    for process in PROCESSES:
        row = page.locator(f'#nodes-body tr.group-row[data-group="{process}"]')
        picked = sum(name.startswith(f"{process}-v") for name in sampled)
        expect(row).to_have_attribute("data-count", str(PER_PROCESS))
        expect(row).to_have_attribute("data-picked", str(picked))
        expect(row).to_contain_text(f"{PER_PROCESS} nodes")
        expect(row).to_contain_text(f"{PER_PROCESS - picked} idle: not sampled")
        expect(row).to_contain_text(f"{picked} picked this round" if picked else "mean progress")


def check_pages(page: Page, cluster: LocalCluster, fleet: Fleet, sampled: list[str]) -> None:
    """Both processes listed: 100 rows and 2 group rows on three pages of 50; the rows
    marked picked are /sync/status's pick, those idle "not sampled" /nodes' others."""
    for process in reversed(PROCESSES):  # the last first: each group row stays on page 1
        page.locator(f'tr.group-row[data-group="{process}"] .group-toggle').click()
    expect(page.locator("#nodes-page")).to_have_text("page 1 of 3 · rows 1-50")
    expect(page.locator("#nodes-body tr")).to_have_count(50)
    picked = all_pages(page, PICKED)
    expect(page.locator("#nodes-page")).to_have_text("page 3 of 3 · rows 101-102")
    assert sorted(picked) == sorted(sampled)
    rows = cluster.request("GET", "/nodes")["nodes"]
    idle = sorted(r["name"] for r in rows if r["state"] == "not_sampled")
    assert idle == sorted(set(fleet.names) - set(sampled))
    assert sorted(all_pages(page, NOT_SAMPLED)) == idle
    expect(page.locator("#nodes-page")).to_have_text("page 3 of 3 · rows 101-102")
    page.locator("#nodes-prev").click()
    expect(page.locator("#nodes-page")).to_have_text("page 2 of 3 · rows 51-100")


def check_node_chart(page: Page, trained: set[str]) -> None:
    """The node-loss chart draws 12 lines at most, and says so when more nodes trained."""
    chart = page.locator("#chart-nodes")
    expect(chart).to_have_attribute("data-nodes", str(len(trained)))
    expect(chart).to_have_attribute("data-series", str(min(len(trained), 12)))
    note = page.locator("#nodes-chart-note")
    if len(trained) > 12:
        expect(note).to_have_text(
            f"{len(trained)} nodes have trained: 12 lines drawn, the nodes of the newest"
            " round first (one line each up to 12)."
        )
    else:
        expect(note).to_be_hidden()


def test_a_sampled_job_over_100_nodes_marks_the_pick_groups_and_pages(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    with running_cluster(tmp_path, ENV) as cluster, running_fleet(cluster.url, ROUNDS) as fleet:
        cluster.request("POST", "/datasets/prepare-mnist")
        cluster.wait_nodes(NODES)
        open_dashboard(page, cluster)
        expect(page.locator("#nodes-count")).to_have_text(f"{NODES} connected")
        expect(page.locator("#nodes-body tr.group-row")).to_have_count(len(PROCESSES))
        log_timings(page, "100 idle nodes")

        cluster.request("POST", f"/train/mnist?epochs={ROUNDS}&fraction=0.1")
        status = wait_held_round(cluster, fleet)
        sampled = status["sampled"]
        assert status["sampling"] == {"fraction": 0.1, "min_nodes": 1}
        assert len(sampled) == NODES // 10, sampled
        expect(page.locator("#run-sampling")).to_have_text(
            f"sampling: 10% (≥1) of the nodes, {len(sampled)} picked"
        )
        check_groups(page, sampled)
        # The timeline names a dozen nodes a line at most, and says whose pick a round is.
        timeline = page.locator("#timeline > li")
        expect(timeline.and_(page.locator('[data-kind="job_started"]'))).to_contain_text(
            f"and {NODES - 12} more"
        )
        expect(timeline.and_(page.locator('[data-kind="round_opened"]')).first).to_contain_text(
            "(client sampling's pick)"
        )
        check_pages(page, cluster, fleet, sampled)
        check_node_chart(page, set(status["history"][0]["contributors"]) | set(sampled))
        figures = log_timings(page, "two sampled rounds, live")
        # Progress frames come in bursts: the table draws once a frame, not once an event.
        assert 0 < figures["table"]["frames"] < figures["events"], figures
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(artifacts_dir / "dashboard-many-nodes.png"), full_page=True)

        # A reload shows the same pick from the snapshot alone.
        page.reload()
        expect(page.locator("#conn")).to_have_text("live")
        check_groups(page, sampled)
        expect(page.locator("#run-sampling")).to_have_text(
            f"sampling: 10% (≥1) of the nodes, {len(sampled)} picked"
        )
        log_timings(page, "reloaded during the held round")

        fleet.release()
        final = cluster.wait_job(60)
        expect(page.locator("#run-state")).to_have_text("completed")
        expect(page.locator('#nodes-body tr[data-picked="true"]')).to_have_count(0)
    assert final["state"] == "completed", final
    assert [len(h["contributors"]) for h in final["history"]] == [NODES // 10] * ROUNDS
    assert sorted(final["history"][-1]["contributors"]) == sorted(sampled)
    assert {code for _, _, code in fleet.uploads} == {200}, fleet.uploads
    assert len(fleet.uploads) == ROUNDS * NODES // 10
    assert fleet.errors == []
    assert offline_guard == []
    assert page_errors == []
