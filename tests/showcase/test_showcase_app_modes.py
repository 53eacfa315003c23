"""The page follows the zoo: image models take an upload, others are listed with why not.

Driven in-process through the page's own objects (``ShowcaseApp`` and its widgets), with
model files written here as the orchestrator writes them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from showcase_support import (
    CIFAR10_NAMES,
    AiohttpServer,
    Mnist,
    TrainedModel,
    cifar_model_bytes,
    drawn_digit,
    fake_orchestrator,
    first_correct,
    model_bytes,
    png_bytes,
    serve,
)

from node.shared.model import ModelSpec, init_state
from node.shared.weights import WeightsMeta
from showcase.app import IMAGE_HINT, ShowcaseApp
from showcase.models import ModelCache
from showcase.sources import DirectorySource, OrchestratorSource
from showcase.upload import MAX_IMAGE_BYTES, predict_upload

FIVE_CHANNELS = ModelSpec(arch="cnn", input_shape=(5, 32, 32), channels=(4,), hidden=(8,))
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def photo() -> bytes:
    """A PNG with some structure (a colour gradient and a dark disc), 120x90."""
    y, x = np.mgrid[0:90, 0:120]
    rgb = np.stack([x * 2, y * 2, 255 - x], axis=-1).clip(0, 255).astype(np.uint8)
    rgb[(y - 45) ** 2 + (x - 60) ** 2 < 400] = 20
    data: bytes = png_bytes(Image.fromarray(rgb))
    return data


def make_app(folder: Path) -> ShowcaseApp:
    app = ShowcaseApp(DirectorySource(folder), ModelCache(), 64 * 1024 * 1024)
    app.refresh()
    return app


def upload_image(app: ShowcaseApp, data: bytes, filename: str = "photo.png") -> None:
    """What the browser's FileInput does: the file's name, then its bytes."""
    app.image_input.filename = filename
    app.image_input.value = data


def bar_labels(html: str) -> list[str]:
    return re.findall(r'<span class="label" title="[^"]*">([^<]*)</span>', html)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "cifar.safetensors").write_bytes(cifar_model_bytes(seed=3))
    return folder


def test_an_image_model_gets_the_upload_mode(cifar_dir: Path) -> None:
    app = make_app(cifar_dir)

    assert app.model is not None and app.model.mode == "upload"
    assert app.imaging.visible and not app.drawing.visible
    assert app.image_input.accept == ".png,.jpg,.jpeg"
    assert "Upload a PNG or JPEG" in app.result.object
    (label,) = app.picker.options
    assert "cifar10 · resnet · 3\u00d732\u00d732" in label
    assert "<td>input</td><td>3\u00d732\u00d732</td>" in app.details.object


def test_an_uploaded_png_gets_the_top5_with_the_datasets_class_names(cifar_dir: Path) -> None:
    app = make_app(cifar_dir)
    expected = predict_upload(cifar_dir / "cifar.safetensors", photo())

    upload_image(app, photo())

    assert app.prediction is not None
    assert len(expected) == 5 and {name for name, _ in expected} <= set(CIFAR10_NAMES)
    assert [(r.name, r.probability) for r in app.prediction.top(5)] == expected
    assert 'id="top5"' in app.bars.object
    assert bar_labels(app.bars.object) == [name for name, _ in expected]
    assert f'id="predicted-class">{expected[0][0]}</span>' in app.result.object
    assert f"{expected[0][1]:.1%} confident" in app.result.object
    preview = re.search(r'src="data:image/png;base64,([^"]+)"', app.seen.object)
    assert preview is not None and "3\u00d732\u00d732" in app.seen.object
    assert Image.open(io.BytesIO(base64.b64decode(preview.group(1)))).size == (128, 128)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n not really", "not a readable image"),
        (b"\xff" * (MAX_IMAGE_BYTES + 1), "images may be at most 8 MiB"),
    ],
    ids=["corrupt", "oversized"],
)
def test_a_bad_image_gets_a_message_not_a_traceback(
    cifar_dir: Path, data: bytes, message: str
) -> None:
    app = make_app(cifar_dir)
    upload_image(app, photo())

    upload_image(app, data, "bad.png")

    assert app.prediction is None
    assert message in app.result.object and "bad.png" in app.result.object
    assert app.bars.object == app.seen.object == ""


def test_the_mode_follows_the_picked_model_and_the_image_is_asked_again(
    cifar_dir: Path, trained: TrainedModel, mnist: Mnist
) -> None:
    (cifar_dir / trained.path.name).write_bytes(trained.data)  # 2025-06-01: older
    app = make_app(cifar_dir)
    upload_image(app, photo())
    index = first_correct(mnist, trained)

    app.picker.value = trained.path.name
    assert app.drawing.visible and not app.imaging.visible
    assert app.prediction is None
    app.canvas.value = drawn_digit(mnist, index)
    assert app.prediction is not None and app.prediction.digit == mnist.test_y[index]
    assert 'id="prob-bars"' in app.bars.object

    app.picker.value = "cifar.safetensors"
    assert app.imaging.visible and not app.drawing.visible
    assert app.prediction is not None
    assert bar_labels(app.bars.object) == [
        n for n, _ in predict_upload(cifar_dir / "cifar.safetensors", photo())
    ]


def test_a_drawn_model_with_class_names_labels_its_answer_and_bars(
    tmp_path: Path, trained: TrainedModel, mnist: Mnist
) -> None:
    (tmp_path / "named.safetensors").write_bytes(
        model_bytes(trained.state, trained.spec, class_names=DIGIT_NAMES)
    )
    app = make_app(tmp_path)
    index = first_correct(mnist, trained)

    app.canvas.value = drawn_digit(mnist, index)

    assert app.prediction is not None
    digit = int(mnist.test_y[index])
    assert bar_labels(app.bars.object) == DIGIT_NAMES
    assert f'data-digit="{digit}"' in app.bars.object
    assert f'id="predicted-digit">{digit}</span>' in app.result.object
    assert f'id="predicted-class">{DIGIT_NAMES[digit]}</span>' in app.result.object


def test_an_unnamed_drawn_model_keeps_its_digit_bars(models_dir: Path, mnist: Mnist) -> None:
    app = make_app(models_dir)

    app.canvas.value = drawn_digit(mnist, 0)

    assert bar_labels(app.bars.object) == [str(d) for d in range(10)]
    assert "predicted-class" not in app.result.object


def unservable_files(folder: Path) -> None:
    """Three files it cannot serve, all newer than anything servable."""
    new = datetime(2031, 1, 1, tzinfo=UTC)
    (folder / "five.safetensors").write_bytes(
        model_bytes(init_state(FIVE_CHANNELS, seed=1), FIVE_CHANNELS, created=new)
    )
    metadata = WeightsMeta(ModelSpec()).to_metadata() | {"dataset": "vit-set"}
    metadata["model_spec"] = json.dumps({"arch": "vit", "input_shape": [3, 32, 32]})
    header = json.dumps({"__metadata__": metadata}).encode()
    (folder / "vit.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (folder / "junk.safetensors").write_bytes(b"not a model")


def test_models_it_cannot_serve_stay_listed_with_why(cifar_dir: Path) -> None:
    unservable_files(cifar_dir)

    app = make_app(cifar_dir)

    assert app.picker.value == "cifar.safetensors"  # the newest it can serve
    labels = {key: label for label, key in app.picker.options.items()}
    assert len(labels) == 4
    assert labels["five.safetensors"] == (
        "five.safetensors · cannot serve · acc 90.0% · final · mnist · cnn · 5\u00d732\u00d732"
        " · 3 rounds · 2 nodes"
    )
    assert labels["vit.safetensors"].startswith("vit.safetensors · cannot serve · ")
    assert labels["vit.safetensors"].endswith(" · vit-set")
    assert labels["junk.safetensors"].startswith("junk.safetensors · cannot serve · ?")
    lines = app.unservable.object
    assert "five.safetensors: cannot serve: its input has 5 channels" in lines
    assert (
        "vit.safetensors: cannot serve: bad weights metadata: arch: unknown &#x27;vit&#x27;"
        in lines
    )
    assert "junk.safetensors: cannot serve: not a readable model file" in lines
    assert "cifar.safetensors" not in lines


def test_picking_a_model_it_cannot_serve_says_why(cifar_dir: Path) -> None:
    unservable_files(cifar_dir)
    app = make_app(cifar_dir)

    app.picker.value = "five.safetensors"

    assert app.model is None
    assert app.model_status.alert_type == "danger"
    assert "Cannot use five.safetensors: its input has 5 channels" in app.model_status.object
    assert "<td>input</td><td>5\u00d732\u00d732</td>" in app.details.object
    assert app.drawing.visible and not app.imaging.visible


def test_only_unservable_models_are_listed_and_explained(tmp_path: Path) -> None:
    unservable_files(tmp_path)

    app = make_app(tmp_path)

    assert app.model is None
    assert len(app.picker.options) == 3
    assert "Cannot use" in app.model_status.object
    upload_image(app, photo())
    assert "No model is loaded" in app.result.object


async def test_the_orchestrator_source_serves_image_models_and_lists_the_rest(
    aiohttp_server: AiohttpServer, cifar_dir: Path
) -> None:
    (cifar_dir / "five.safetensors").write_bytes(
        model_bytes(init_state(FIVE_CHANNELS, seed=1), FIVE_CHANNELS)
    )
    url = await serve(aiohttp_server, fake_orchestrator(cifar_dir))
    app = ShowcaseApp(OrchestratorSource([url]), ModelCache(), 64 * 1024 * 1024)

    await asyncio.to_thread(app.refresh)
    await asyncio.to_thread(upload_image, app, photo())

    assert app.picker.value == "cifar.safetensors"
    assert app.prediction is not None
    assert bar_labels(app.bars.object) == [
        n for n, _ in predict_upload(cifar_dir / "cifar.safetensors", photo())
    ]
    assert "five.safetensors: cannot serve: its input has 5 channels" in app.unservable.object


def test_without_an_image_yet_the_upload_mode_says_what_to_do(cifar_dir: Path) -> None:
    app = make_app(cifar_dir)

    app.classify_image()

    assert IMAGE_HINT in app.result.object
    assert app.prediction is None
