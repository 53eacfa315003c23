"""The real page in Debian's Chromium: draw with the mouse (and a finger), see the answer.

The app is served in-process by the same ``serve()`` the console script uses. Every page is
guarded by ``offline_guard`` (tests/conftest.py): any request that leaves loopback is
aborted and recorded, and must not happen.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from showcase_page import SEVEN, TIMEOUT_MS, Showcase, open_app, start, stroke
from showcase_support import TrainedModel, cifar_model_bytes, model_bytes, png_bytes

from showcase.upload import ACCEPT, predict_upload

pytestmark = pytest.mark.browser


@pytest.fixture
def showcase(models_dir: Path) -> Iterator[Showcase]:
    yield from start(models_dir)


def test_drawing_a_digit_shows_the_prediction_and_the_bars(
    page: Page,
    showcase: Showcase,
    offline_guard: list[str],
    page_errors: list[str],
    artifacts_dir: Path,
) -> None:
    box = open_app(page, showcase.url)
    expect(page.locator("#model-details")).to_contain_text("mnist", timeout=TIMEOUT_MS)

    stroke(page, box, SEVEN)

    digit = page.locator("#predicted-digit")
    expect(digit).to_be_visible(timeout=TIMEOUT_MS)
    expect(digit).to_have_text("7")
    expect(page.locator("#confidence")).to_contain_text("% confident")
    expect(page.locator(".prob-row")).to_have_count(10)
    expect(page.locator(".prob-row.top")).to_have_attribute("data-digit", "7")
    expect(page.locator("#model-input")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "showcase.png"), full_page=True)

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#predicted-digit")).to_have_count(0, timeout=TIMEOUT_MS)
    expect(page.locator("#hint")).to_be_visible()

    assert offline_guard == []
    assert page_errors == []


def test_a_finger_can_draw_too(
    page: Page, showcase: Showcase, offline_guard: list[str], page_errors: list[str]
) -> None:
    box = open_app(page, showcase.url)
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, x: float, y: float) -> None:
        points = (
            []
            if kind == "touchEnd"
            else [{"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]}]
        )
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", *SEVEN[0])
    for (ax, ay), (bx, by) in itertools.pairwise(SEVEN):
        for i in range(1, 11):
            touch("touchMove", ax + (bx - ax) * i / 10, ay + (by - ay) * i / 10)
    touch("touchEnd", 0, 0)

    expect(page.locator("#predicted-digit")).to_have_text("7", timeout=TIMEOUT_MS)
    assert offline_guard == []
    assert page_errors == []


def test_new_models_and_uploads_appear_in_the_picker(
    page: Page,
    showcase: Showcase,
    offline_guard: list[str],
    page_errors: list[str],
    tmp_path: Path,
) -> None:
    open_app(page, showcase.url)
    picker = page.locator("select")
    expect(picker.locator("option")).to_have_count(1, timeout=TIMEOUT_MS)

    (showcase.models_dir / "newer.safetensors").write_bytes(
        model_bytes(created=datetime(2030, 1, 2, 3, 4, tzinfo=UTC), dataset="fresh-mnist")
    )
    expect(picker.locator("option")).to_have_count(2, timeout=TIMEOUT_MS)
    expect(picker.locator("option").first).to_contain_text(
        "2030-01-02 03:04 · acc 90.0% · final · fresh-mnist"
    )

    upload = tmp_path / "mine.safetensors"
    upload.write_bytes(model_bytes(dataset="uploaded-set"))
    page.locator("#model-upload").set_input_files(upload)
    expect(picker.locator("option")).to_have_count(3, timeout=TIMEOUT_MS)
    expect(page.locator("#model-details")).to_contain_text("mine.safetensors")

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not a model")
    page.locator("#model-upload").set_input_files(junk)
    expect(page.get_by_text("junk.safetensors was not loaded")).to_be_visible(timeout=TIMEOUT_MS)
    assert offline_guard == []
    assert page_errors == []


def test_the_browser_refuses_an_oversized_upload_before_sending_it(
    page: Page,
    models_dir: Path,
    trained: TrainedModel,
    offline_guard: list[str],
    page_errors: list[str],
) -> None:
    for app in start(models_dir, max_upload_bytes=1000):
        open_app(page, app.url)
        page.locator("#model-upload").set_input_files(trained.path)
        refused = page.get_by_text(f"Not loaded: {trained.path.name} is")
        expect(refused).to_contain_text("models may be at most", timeout=TIMEOUT_MS)
    assert offline_guard == []
    assert page_errors == []


def test_with_no_model_yet_the_page_says_what_to_do(
    page: Page, tmp_path: Path, offline_guard: list[str], page_errors: list[str]
) -> None:
    for app in start(tmp_path / "empty"):
        box = open_app(page, app.url)
        expect(page.get_by_text("No model yet")).to_be_visible(timeout=TIMEOUT_MS)
        stroke(page, box, SEVEN)
        expect(page.get_by_text("No model is loaded")).to_be_visible(timeout=TIMEOUT_MS)
    assert offline_guard == []
    assert page_errors == []


def test_an_image_model_takes_an_uploaded_png_and_shows_its_top5(
    page: Page,
    tmp_path: Path,
    offline_guard: list[str],
    page_errors: list[str],
    artifacts_dir: Path,
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "cifar.safetensors").write_bytes(cifar_model_bytes(seed=7))
    picture = tmp_path / "photo.png"
    gradient = Image.linear_gradient("L").resize((160, 120))
    picture.write_bytes(png_bytes(Image.merge("RGB", (gradient, gradient.rotate(90), gradient))))
    expected = predict_upload(folder / "cifar.safetensors", picture.read_bytes())

    for app in start(folder):
        page.goto(app.url)
        file_input = page.locator(f'input[type="file"][accept="{ACCEPT}"]')
        expect(file_input).to_be_attached(timeout=TIMEOUT_MS)
        expect(page.locator("select option").first).to_contain_text("cifar10 · resnet")
        expect(page.locator("#draw-canvas")).to_be_hidden()

        file_input.set_input_files(picture)

        rows = page.locator("#top5 .prob-row .label")
        expect(rows).to_have_text([name for name, _ in expected], timeout=TIMEOUT_MS)
        expect(page.locator("#predicted-class")).to_have_text(expected[0][0])
        expect(page.locator("#confidence")).to_contain_text(f"{expected[0][1]:.1%}")
        expect(page.locator("#model-input")).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "showcase-upload.png"), full_page=True)
    assert offline_guard == []
    assert page_errors == []
