"""The dashboard's controls in Debian's Chromium, against the real orchestrator (and one node).

The dataset picker lists the server's catalogue with each entry's shape and whether it is
prepared, prepares the selected dataset while showing the server's progress reports, shows
the server's own message when a dataset cannot be prepared offline, and picks up an import
live; the model picker's choice reaches ``POST /train`` and the run panel.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from playwright.sync_api import Page, WebSocket, expect

from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import open_dashboard, texts_seen, watch_text

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Chromium logs every 4xx/5xx answer; the refused requests a test makes on purpose are those.
REFUSED = re.compile(r"^Failed to load resource: .* status of 503 ")

# Records the preparation label's text each time it changes while the bar is shown: the bar
# may be up for well under a second, too short to poll for.
WATCH_PROGRESS = """() => {
    window.__progressSeen = [];
    const box = document.getElementById("prepare-progress");
    const label = document.getElementById("prepare-label");
    new MutationObserver(() => {
        if (!box.hidden) window.__progressSeen.push(label.textContent);
    }).observe(box, { subtree: true, childList: true, characterData: true, attributes: true });
}"""


def shape_text(dims: list[int]) -> str:
    """A shape as the page writes it: channels first, joined by a multiplication sign."""
    return "\N{MULTIPLICATION SIGN}".join(str(d) for d in dims)


@pytest.fixture
def dashboard_events(page: Page) -> list[dict[str, Any]]:
    """Every event the page's dashboard socket received, in order."""
    events: list[dict[str, Any]] = []

    def on_socket(ws: WebSocket) -> None:
        def on_frame(payload: str | bytes) -> None:
            msg = json.loads(payload)
            if msg.get("type") == "event":
                events.append(msg)

        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return events


def test_picker_lists_the_catalogue_prepares_with_progress_and_shows_the_503(
    page: Page,
    offline_guard: list[str],
    page_errors: list[str],
    dashboard_events: list[dict[str, Any]],
    cluster: LocalCluster,
) -> None:
    catalog = cluster.request("GET", "/datasets")["catalog"]
    assert catalog and not any(entry["prepared"] for entry in catalog)
    open_dashboard(page, cluster)
    picker = page.get_by_label("Dataset", exact=True)
    options = picker.locator("option")
    expect(options).to_have_count(len(catalog))
    for i, entry in enumerate(catalog):  # the catalogue's order, each with its shape
        option = options.nth(i)
        expect(option).to_have_attribute("value", entry["dataset_id"])
        expect(option).to_have_text(
            f"{entry['title']} ({entry['dataset_id']}) · {shape_text(entry['input_shape'])}"
            " · not prepared"
        )
    expect(picker).to_have_value("mnist")
    prepare = page.get_by_role("button", name="Prepare", exact=True)
    expect(prepare).to_be_enabled()

    # Prepare the default (MNIST, its offline subset here): the bar follows the server's
    # reports, and goes once the dataset is prepared.
    page.evaluate(WATCH_PROGRESS)
    message = page.locator("#control-message")
    prepare.click()
    expect(message).to_have_text(re.compile(r" ready from "), timeout=30_000)
    prepared = cluster.request("GET", "/datasets")["datasets"]
    mnist = next(d for d in prepared if d["dataset_id"] == "mnist")
    title = next(e["title"] for e in catalog if e["dataset_id"] == "mnist")
    expect(message).to_have_text(
        f"{title} ready from {mnist['source']}: {mnist['train_samples']:,} train / "
        f"{mnist['test_samples']:,} test samples of {shape_text(mnist['input_shape'])}."
    )
    expect(message).to_have_attribute("data-tone", "ok")
    expect(page.locator("#prepare-progress")).to_be_hidden()
    reports = [e["data"] for e in dashboard_events if e["kind"] == "dataset_progress"]
    assert reports and {r["dataset"] for r in reports} == {"mnist"}, reports
    seen = page.evaluate("window.__progressSeen")
    assert seen, "the progress bar never showed"
    stages = "|".join(sorted({r["stage"] for r in reports}))
    for text in seen:
        assert re.fullmatch(rf"Preparing {re.escape(title)}: ({stages}) \d+%", text), seen
    # dataset_prepared refreshed the picker from /datasets.
    expect(picker.locator('option[value="mnist"]')).to_have_text(re.compile(r" · prepared$"))
    expect(page.locator("#run-dataset-sub")).to_contain_text(shape_text(mnist["input_shape"]))

    # A dataset with no files, no download and no offline subset: the server's 503, verbatim.
    failing = next(e for e in catalog if not e["offline_fallback"])
    picker.select_option(failing["dataset_id"])
    expect(picker).to_have_value(failing["dataset_id"])
    with page.expect_response(
        lambda r: f"/datasets/{failing['dataset_id']}/prepare" in r.url
    ) as answer:
        prepare.click()
    assert answer.value.status == 503
    server_message = answer.value.json()["error"]["message"]
    assert failing["title"] in server_message
    expect(message).to_have_text(f"{server_message} (HTTP 503)")
    expect(message).to_have_attribute("data-tone", "error")
    expect(page.locator("#prepare-progress")).to_be_hidden()
    expect(picker.locator(f'option[value="{failing["dataset_id"]}"]')).to_have_text(
        re.compile(r" · not prepared$")
    )
    expect(picker).to_have_value(failing["dataset_id"])  # the refresh kept the user's choice
    assert offline_guard == []
    assert [e for e in page_errors if not REFUSED.match(e)] == []


def test_an_import_appears_in_the_picker_live_with_nothing_to_prepare(
    page: Page, offline_guard: list[str], page_errors: list[str], cluster: LocalCluster
) -> None:
    open_dashboard(page, cluster)
    picker = page.get_by_label("Dataset", exact=True)
    expect(picker.locator('option[value="mnist"]')).to_have_count(1)  # the list has arrived
    imports = cluster.home / "imports"
    imports.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 12, 10, 3), dtype=np.uint8)
    np.savez(imports / "swatches.npz", x=x, y=np.arange(40) % 4)
    info = cluster.request(
        "POST",
        "/datasets/import",
        body={"path": str(imports / "swatches.npz"), "dataset_id": "swatches"},
    )
    option = picker.locator('option[value="swatches"]')
    expect(option).to_have_text(f"swatches · {shape_text(info['input_shape'])} · imported")
    prepare = page.get_by_role("button", name="Prepare", exact=True)
    expect(picker).to_have_value("mnist")  # an import does not take the user's choice away
    expect(prepare).to_be_enabled()
    picker.select_option("swatches")
    expect(prepare).to_be_disabled()
    picker.select_option("mnist")
    expect(prepare).to_be_enabled()
    assert offline_guard == []
    assert page_errors == []


def test_start_sends_the_picked_model_and_the_run_panel_shows_it(
    page: Page, offline_guard: list[str], page_errors: list[str], cluster: LocalCluster
) -> None:
    open_dashboard(page, cluster)
    cluster.start_node("node-1", threads=1)
    expect(page.locator("#nodes-body tr")).to_have_count(1, timeout=60_000)
    expect(page.get_by_label("Dataset", exact=True)).to_have_value("mnist")
    page.get_by_role("button", name="Prepare", exact=True).click()
    message = page.locator("#control-message")
    expect(message).to_have_text(re.compile(r"ready from"), timeout=30_000)

    model = page.get_by_label("Model", exact=True)
    expect(model).to_have_value("")  # the server's default unless one is picked
    model.select_option("cnn")
    page.locator("#epochs").fill("1")
    watch_text(page, "control-message")
    with page.expect_request(lambda r: "/train/" in r.url and r.method == "POST") as sent:
        page.get_by_role("button", name="Start job").click()
    url = urlparse(sent.value.url)
    assert url.path == "/train/mnist"
    assert parse_qs(url.query) == {"epochs": ["1"], "model": ["cnn"]}

    # One quick round: "started" may already have given way to "completed".
    expect(message).to_have_text(re.compile(r" (started: |completed)"), timeout=30_000)
    status = cluster.request("GET", "/sync/status")
    spec, train = status["model"], status["train"]
    assert spec["arch"] == "cnn"
    shape = shape_text(spec["input_shape"])
    started = f"Job {status['run_id']} started: 1 rounds on 1 nodes, cnn · {shape} on mnist."
    assert started in texts_seen(page, "control-message")
    expect(page.locator("#run-model")).to_have_text(f"cnn · {shape}")
    expect(page.locator("#run-model-sub")).to_contain_text(f"batch {train['batch_size']}")
    expect(page.locator("#run-model-sub")).to_contain_text(
        f"at most {train['max_batches']} batches"
    )
    expect(page.locator("#run-state")).to_have_text("completed", timeout=90_000)
    expect(page.locator("#run-model")).to_have_text(f"cnn · {shape}")  # kept after the end
    assert cluster.request("GET", "/sync/status")["model"]["arch"] == "cnn"
    assert offline_guard == []
    assert page_errors == []
