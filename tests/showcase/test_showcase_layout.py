"""The page's layout in Debian's Chromium: a title bar with the dashboard's link, centred
cards, a picker whose labels show each model's accuracy and kind whole, and messages that
stay inside their box. Writes ``docs/showcase.png`` when ``FEDAVG_WRITE_SCREENSHOTS=1``.

The first test's models come from a real ``fedavg-server`` (``GET /models``) whose models
folder holds a job's two files, so the link it shows leads to a real dashboard.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect
from showcase_page import SEVEN, TIMEOUT_MS, open_app, start, stroke
from showcase_support import TrainedModel, model_bytes

from server.demo.local_cluster import LocalCluster, free_port

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parents[2] / "docs"

# How wide the picked option's text is, up to and including `through`, in the select's own
# font, and how much room the select has for text (its arrow sits in the right padding).
MEASURE_PICK = """(select, through) => {
    const style = getComputedStyle(select);
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const text = select.options[select.selectedIndex].text;
    const end = text.indexOf(through);
    const room = select.clientWidth - parseFloat(style.paddingLeft)
        - Math.max(parseFloat(style.paddingRight), 24);
    return { text, end, width: ctx.measureText(text.slice(0, end + through.length)).width, room };
}"""

# Whether an element's text is drawn inside its box: no overflow, and every line's box
# within the element's.
TEXT_INSIDE = """(el) => {
    const box = el.getBoundingClientRect();
    const range = document.createRange();
    range.selectNodeContents(el.shadowRoot ?? el);
    const lines = [...range.getClientRects()].filter((r) => r.width > 0);
    return {
        scroll: el.scrollWidth, client: el.clientWidth, lines: lines.length,
        inside: lines.every((r) => r.left >= box.left - 0.5 && r.right <= box.right + 0.5),
    };
}"""


def two_kinds(folder: Path, trained: TrainedModel) -> None:
    """The trained model saved as a job's best round, and a later final model of it."""
    folder.mkdir(parents=True)
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    best = model_bytes(
        trained.state,
        trained.spec,
        created=created,
        test_accuracy=trained.test_accuracy,
        rounds=5,
        kind="best",
        best_round=3,
    )
    (folder / "run-1-best.safetensors").write_bytes(best)
    final = model_bytes(created=datetime(2025, 6, 1, 12, 1, tzinfo=UTC), test_accuracy=0.9012)
    (folder / "run-1.safetensors").write_bytes(final)


def check_visible_through(picker: Locator, through: str) -> None:
    measured = picker.evaluate(MEASURE_PICK, through)
    assert measured["end"] >= 0, measured
    assert measured["width"] <= measured["room"], measured


@pytest.mark.slow
def test_title_link_centred_cards_and_whole_labels(
    page: Page,
    tmp_path: Path,
    trained: TrainedModel,
    offline_guard: list[str],
    page_errors: list[str],
    artifacts_dir: Path,
) -> None:
    home = tmp_path / "home"
    two_kinds(home / "models", trained)
    with LocalCluster(home=home, port=free_port(), env={"FEDAVG_MNIST_DOWNLOAD": "false"}) as orch:
        orch.start_server()
        orch.wait_healthy()
        for app in start(tmp_path / "unused", orchestrator_urls=(orch.url,)):
            page.set_viewport_size({"width": 1280, "height": 640})
            check_page(page, app.url, orch.url, trained, artifacts_dir)
            # The link leads to the orchestrator's live dashboard.
            with page.context.expect_page() as opened:
                page.locator("#dashboard-link").click()
            expect(opened.value.locator("#conn")).to_have_text("live", timeout=TIMEOUT_MS)
    assert offline_guard == []
    assert page_errors == []


def check_page(
    page: Page, url: str, orchestrator: str, trained: TrainedModel, artifacts_dir: Path
) -> None:
    """Title and link, both models' labels whole in the picker, centred cards, a drawing."""
    box = open_app(page, url)
    expect(page.locator("#titlebar h1")).to_have_text("fedavg try the model")
    expect(page.locator("#titlebar")).to_contain_text(
        f"models from the orchestrator at {orchestrator}"
    )
    link = page.locator("#dashboard-link")
    expect(link).to_have_text("Open the dashboard ↗")
    assert link.get_attribute("href") == orchestrator + "/"
    assert link.get_attribute("rel") == "noopener"

    picker = page.locator("select")
    options = picker.locator("option")
    expect(options).to_have_count(2, timeout=TIMEOUT_MS)
    expect(options.nth(0)).to_contain_text("2025-06-01 12:01 · acc 90.1% · final · mnist")
    best = f"2025-06-01 12:00 · acc {trained.test_accuracy:.1%} · best (round 3) · mnist"
    expect(options.nth(1)).to_contain_text(best)
    expect(page.locator("#model-details")).to_contain_text("final")
    check_visible_through(picker, " · final")
    picker.select_option(index=1)
    expect(page.locator("#model-details")).to_contain_text("best (round 3)")
    check_visible_through(picker, " · best (round 3)")

    # The three cards share one row, centred in the window, using most of it.
    cards = [page.locator(f".card-{name}:visible") for name in ("draw", "answer", "model")]
    boxes: list[Any] = [card.bounding_box() for card in cards]
    assert all(b is not None for b in boxes), boxes
    assert len({round(b["y"]) for b in boxes}) == 1, boxes
    left, right = boxes[0]["x"], 1280 - (boxes[-1]["x"] + boxes[-1]["width"])
    assert abs(left - right) <= 2 and left < 1280 * 0.1, (left, right, boxes)

    stroke(page, box, SEVEN)
    expect(page.locator("#predicted-digit")).to_have_text("7", timeout=TIMEOUT_MS)
    expect(page.locator("#model-input")).to_be_visible()
    page.wait_for_timeout(300)  # the bars' and the picture's last paint
    shot = page.screenshot(full_page=True)
    (artifacts_dir / "showcase-layout.png").write_bytes(shot)
    if os.environ.get("FEDAVG_WRITE_SCREENSHOTS") == "1":
        (DOCS / "showcase.png").write_bytes(shot)


def test_a_long_message_stays_inside_its_box_and_no_link_without_an_orchestrator(
    page: Page, models_dir: Path, tmp_path: Path, offline_guard: list[str], page_errors: list[str]
) -> None:
    junk = tmp_path / ("a_model_file_with_a_very_long_name_that_has_no_spaces" + ".safetensors")
    junk.write_bytes(b"definitely not a model")
    for app in start(models_dir):
        open_app(page, app.url)
        expect(page.locator("#titlebar")).to_contain_text(f"models from the folder {models_dir}")
        expect(page.locator("#dashboard-link")).to_have_count(0)
        page.locator("#model-upload").set_input_files(junk)
        alert = page.locator(".alert")
        expect(alert).to_contain_text(f"{junk.name} was not loaded", timeout=TIMEOUT_MS)
        drawn = alert.evaluate(TEXT_INSIDE)
        assert drawn["scroll"] <= drawn["client"], drawn
        assert drawn["lines"] >= 2 and drawn["inside"], drawn
    assert offline_guard == []
    assert page_errors == []
