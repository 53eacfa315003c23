"""The page's behaviour without a browser: drawings in, predictions and messages out."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image
from showcase_support import (
    AiohttpServer,
    Mnist,
    TrainedModel,
    drawn_digit,
    fake_orchestrator,
    first_correct,
    model_bytes,
    png_url,
    serve,
)

from showcase.app import ShowcaseApp, create_page
from showcase.models import ModelCache
from showcase.settings import Settings
from showcase.sources import DirectorySource, OrchestratorSource


def blank_url() -> str:
    url: str = png_url(Image.new("RGB", (280, 280), "white"))
    return url


def make_app(folder: Path, max_upload_bytes: int = 64 * 1024 * 1024) -> ShowcaseApp:
    app = ShowcaseApp(DirectorySource(folder), ModelCache(), max_upload_bytes)
    app.refresh()
    return app


def test_with_no_model_the_page_says_so(tmp_path: Path, mnist: Mnist) -> None:
    app = make_app(tmp_path / "models")

    assert app.model_status.visible
    assert app.model_status.alert_type == "warning"
    assert "No model yet" in app.model_status.object
    assert "fedavg-demo" in app.model_status.object
    assert app.picker.options == {}

    app.canvas.value = drawn_digit(mnist, 0)

    assert app.prediction is None
    assert "No model is loaded" in app.result.object


def test_the_newest_model_is_picked_and_described(models_dir: Path) -> None:
    (models_dir / "older.safetensors").write_bytes(
        model_bytes(created=datetime(2024, 1, 1, tzinfo=UTC))
    )

    app = make_app(models_dir)

    labels = list(app.picker.options)
    assert re.fullmatch(
        r"2025-06-01 12:00 · acc \d+\.\d% · final · mnist · mlp · 1\u00d728\u00d728"
        r" · 5 rounds · 3 nodes",
        labels[0],
    ), labels[0]
    assert labels[1].startswith("2024-01-01 00:00")
    assert app.picker.value == "final-run-test.safetensors"
    assert app.model is not None
    assert not app.model_status.visible
    assert "model-details" in app.details.object
    assert "<td>nodes</td><td>3</td>" in app.details.object


def test_drawing_a_digit_shows_prediction_bars_and_what_the_model_saw(
    models_dir: Path, mnist: Mnist, trained: TrainedModel
) -> None:
    index = first_correct(mnist, trained)
    app = make_app(models_dir)

    app.canvas.value = drawn_digit(mnist, index)

    assert app.prediction is not None
    assert app.prediction.digit == mnist.test_y[index]
    assert f">{app.prediction.digit}</span>" in app.result.object
    assert "confident" in app.result.object
    assert app.bars.object.count('class="prob-row') == 10
    assert f'class="prob-row top" data-digit="{app.prediction.digit}"' in app.bars.object
    assert 'id="model-input"' in app.seen.object


def test_predict_on_demand_and_after_switching_models(
    models_dir: Path, mnist: Mnist, trained: TrainedModel
) -> None:
    (models_dir / "older.safetensors").write_bytes(
        model_bytes(created=datetime(2024, 1, 1, tzinfo=UTC))
    )
    app = make_app(models_dir)
    app.canvas.value = drawn_digit(mnist, first_correct(mnist, trained))
    trained_probs = app.prediction.probabilities if app.prediction else ()

    app.picker.value = "older.safetensors"  # untrained weights: a different answer

    assert app.prediction is not None
    assert app.prediction.probabilities != trained_probs
    app.prediction = None
    app.predict_button.clicks += 1
    assert app.prediction is not None


def test_an_empty_canvas_gets_a_clear_message(models_dir: Path) -> None:
    app = make_app(models_dir)

    app.predict_button.clicks += 1
    assert "The canvas is empty" in app.result.object

    app.canvas.value = blank_url()
    assert app.prediction is None
    assert "The canvas is empty" in app.result.object
    assert app.bars.object == ""


def test_clear_wipes_the_canvas_and_the_answer(models_dir: Path, mnist: Mnist) -> None:
    app = make_app(models_dir)
    app.canvas.value = drawn_digit(mnist, 0)
    token = app.canvas.clear_token

    app.clear_button.clicks += 1

    assert app.canvas.clear_token == token + 1
    assert app.canvas.value == ""
    assert app.prediction is None
    assert app.bars.object == app.seen.object == ""


def test_a_damaged_drawing_is_reported_not_raised(models_dir: Path) -> None:
    app = make_app(models_dir)

    app.canvas.value = "data:image/png;base64,aGVsbG8="

    assert app.prediction is None
    assert "not a readable image" in app.result.object


def test_new_models_appear_without_a_restart_and_the_pick_is_kept(models_dir: Path) -> None:
    app = make_app(models_dir)
    picked = app.picker.value
    (models_dir / "newer.safetensors").write_bytes(
        model_bytes(created=datetime(2030, 1, 1, tzinfo=UTC))
    )

    app.refresh()

    assert list(app.picker.options.values()) == ["newer.safetensors", picked]
    assert app.picker.value == picked


def test_the_first_model_to_arrive_is_picked(tmp_path: Path, mnist: Mnist) -> None:
    folder = tmp_path / "models"
    app = make_app(folder)
    app.canvas.value = drawn_digit(mnist, 0)
    folder.mkdir()
    (folder / "first.safetensors").write_bytes(model_bytes())

    asyncio.run(app.refresh_async())

    assert app.picker.value == "first.safetensors"
    assert not app.model_status.visible
    assert app.prediction is not None  # the waiting drawing is classified at once


def test_a_deleted_model_falls_back_to_the_next(models_dir: Path) -> None:
    (models_dir / "older.safetensors").write_bytes(
        model_bytes(created=datetime(2024, 1, 1, tzinfo=UTC))
    )
    app = make_app(models_dir)
    (models_dir / "final-run-test.safetensors").unlink()

    app.refresh()

    assert app.picker.value == "older.safetensors"
    assert app.model is not None


def test_a_picked_file_that_turns_out_invalid_is_reported(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    good = model_bytes()
    (tmp_path / "m.safetensors").write_bytes(good)
    app.refresh()
    # Same header (so it still lists), tensors cut short.
    (tmp_path / "m.safetensors").write_bytes(good[: len(good) // 2])
    app.model = None

    app.select("m.safetensors")

    assert app.model is None
    assert app.model_status.alert_type == "danger"
    assert "Cannot use m.safetensors" in app.model_status.object


def test_uploading_a_model_picks_it(tmp_path: Path, trained: TrainedModel, mnist: Mnist) -> None:
    app = make_app(tmp_path / "empty")
    app.canvas.value = drawn_digit(mnist, 0)

    app.upload.filename = "my-model.safetensors"
    app.upload.data = base64.b64encode(trained.data).decode()
    app.upload.nonce += 1

    assert app.picker.value.startswith("upload:")
    assert next(iter(app.picker.options)).startswith("uploaded · 2025-06-01 12:00 · acc ")
    assert app.model is not None and app.prediction is not None
    assert not app.model_status.visible
    assert app.upload.data == ""  # the session keeps no second copy
    assert "my-model.safetensors" in app.details.object


def test_uploads_stay_on_offer_beside_saved_models(models_dir: Path) -> None:
    app = make_app(models_dir)

    info = app.add_upload("u.safetensors", model_bytes())
    app.refresh()

    assert list(app.picker.options.values()) == [info.key, "final-run-test.safetensors"]
    assert app.picker.value == info.key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (base64.b64encode(b"\x80\x04K\x01.").decode(), "not a valid fedavg model"),
        ("%%%not base64", "damaged"),
    ],
)
def test_an_invalid_upload_is_refused_with_a_message(
    models_dir: Path, data: str, message: str
) -> None:
    app = make_app(models_dir)
    picked = app.picker.value

    app.upload.filename = "evil.safetensors"
    app.upload.data = data
    app.upload.nonce += 1

    assert app.model_status.alert_type == "danger"
    assert "evil.safetensors was not loaded" in app.model_status.object
    assert message in app.model_status.object
    assert app.picker.value == picked


def test_oversized_uploads_are_refused_in_the_browser_and_on_the_server(
    models_dir: Path,
) -> None:
    app = make_app(models_dir, max_upload_bytes=1000)

    app.upload.rejected = "big.safetensors is 80.0 MiB; models may be at most 64 MiB"
    app.upload.nonce += 1
    assert "Not loaded: big.safetensors is 80.0 MiB" in app.model_status.object

    app.upload.rejected = ""
    app.upload.filename = "big.safetensors"
    app.upload.data = base64.b64encode(model_bytes()).decode()
    app.upload.nonce += 1
    assert "at most" in app.model_status.object


async def test_orchestrator_mode_lists_and_predicts(
    aiohttp_server: AiohttpServer, models_dir: Path, mnist: Mnist, trained: TrainedModel
) -> None:
    url = await serve(aiohttp_server, fake_orchestrator(models_dir))
    app = ShowcaseApp(OrchestratorSource([url]), ModelCache(), 64 * 1024 * 1024)

    await asyncio.to_thread(app.refresh)
    index = first_correct(mnist, trained)
    app.canvas.value = drawn_digit(mnist, index)

    assert app.picker.value == trained.path.name
    assert app.prediction is not None and app.prediction.digit == mnist.test_y[index]


async def test_an_unreachable_orchestrator_is_reported(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(web.Application())
    app = ShowcaseApp(OrchestratorSource([str(server.make_url(""))]), ModelCache(), 1 << 20)

    await app.refresh_async()

    assert app.model_status.alert_type == "danger"
    assert "HTTP 404" in app.model_status.object


def test_create_page_builds_a_layout_outside_a_server(models_dir: Path) -> None:
    page = create_page(Settings(models_dir=models_dir), DirectorySource(models_dir), ModelCache())

    assert page is not None
