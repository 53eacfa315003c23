"""Preprocessing: a drawing anywhere, of any size or stroke, ends up like an MNIST digit."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image, ImageDraw
from showcase_support import Mnist, TrainedModel, accuracy, model_bytes

from node.shared.model import ModelSpec, build_model, init_state
from showcase.errors import BadImageError, EmptyCanvasError
from showcase.models import load_model_bytes
from showcase.preprocess import (
    BOX,
    CENTRE,
    FRAME,
    centre_of_mass,
    decode_data_url,
    model_input,
    preprocess_image,
    preprocess_ink,
    to_png,
)

CANVAS = 280
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def canvas(mode: str = "L") -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank white canvas like the browser's (or a transparent one for RGBA)."""
    paper = 255 if mode == "L" else (0, 0, 0, 0)
    image = Image.new(mode, (CANVAS, CANVAS), paper)
    return image, ImageDraw.Draw(image)


def seven(
    draw: ImageDraw.ImageDraw, left: int, top: int, size: int, width: int, ink: object = 0
) -> None:
    """A '7': a top bar and a diagonal, drawn with a round pen like the canvas's."""
    points = [(left, top), (left + size * 0.7, top), (left + size * 0.3, top + size)]
    draw.line(points, fill=ink, width=width, joint="curve")  # type: ignore[arg-type]


def ink_box(pixels: npt.NDArray[np.uint8]) -> tuple[int, int]:
    """Height and width of the ink in a 28x28 result."""
    rows = np.flatnonzero((pixels > 25).any(axis=1))
    cols = np.flatnonzero((pixels > 25).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def assert_like_mnist(pixels: npt.NDArray[np.uint8]) -> None:
    """Longer side ~20 px, centre of mass at MNIST's centre, ink reaching full intensity."""
    assert pixels.shape == (FRAME, FRAME)
    assert pixels.dtype == np.uint8
    assert pixels.max() == 255
    height, width = ink_box(pixels)
    assert BOX - 2 <= max(height, width) <= BOX + 1
    row, col = centre_of_mass(pixels.astype(np.float32))
    assert abs(row - CENTRE) <= 0.75
    assert abs(col - CENTRE) <= 0.75


@pytest.mark.parametrize(
    ("left", "top", "size", "width"),
    [
        pytest.param(5, 5, 80, 12, id="off-centre-top-left"),
        pytest.param(180, 170, 90, 12, id="off-centre-bottom-right"),
        pytest.param(130, 120, 24, 3, id="small"),
        pytest.param(40, 30, 200, 45, id="thick"),
        pytest.param(50, 40, 180, 18, id="canvas-sized"),
    ],
)
def test_a_seven_anywhere_ends_up_centred_and_scaled(
    left: int, top: int, size: int, width: int
) -> None:
    image, draw = canvas()
    seven(draw, left, top, size, width)

    result = preprocess_image(image)

    assert_like_mnist(result.pixels)


def test_same_digit_at_two_places_and_sizes_gives_nearly_the_same_input() -> None:
    a, draw_a = canvas()
    seven(draw_a, 10, 10, 100, 10)
    b, draw_b = canvas()
    seven(draw_b, 120, 90, 150, 15)

    pa = preprocess_image(a).pixels.astype(np.float32)
    pb = preprocess_image(b).pixels.astype(np.float32)

    assert np.abs(pa - pb).mean() < 12  # of 255: same shape, same place


def test_aspect_ratio_is_kept_for_a_tall_one() -> None:
    image, draw = canvas()
    draw.line([(200, 20), (200, 240)], fill=0, width=16)

    pixels = preprocess_image(image).pixels

    height, width = ink_box(pixels)
    assert height == BOX
    assert width <= 4  # a squash to 20x20 would make it a square blob
    assert abs(centre_of_mass(pixels.astype(np.float32))[1] - CENTRE) <= 0.75


def test_aspect_ratio_is_kept_for_a_wide_stroke() -> None:
    image, draw = canvas()
    draw.line([(10, 250), (200, 250)], fill=0, width=16)

    height, width = ink_box(preprocess_image(image).pixels)

    assert width == BOX
    assert height <= 4


def test_transparent_canvas_with_dark_strokes_reads_like_white_paper() -> None:
    white, draw_white = canvas()
    seven(draw_white, 60, 60, 120, 14)
    clear, draw_clear = canvas("RGBA")
    seven(draw_clear, 60, 60, 120, 14, ink=(0, 0, 0, 255))

    assert np.array_equal(preprocess_image(white).pixels, preprocess_image(clear).pixels)


def test_bbox_reports_where_the_ink_was() -> None:
    image, draw = canvas()
    draw.rectangle([(30, 40), (69, 119)], fill=0)

    assert preprocess_image(image).bbox == (40, 30, 120, 70)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_an_empty_canvas_is_refused_with_a_clear_message(mode: str) -> None:
    image, _ = canvas(mode)

    with pytest.raises(EmptyCanvasError, match="empty"):
        preprocess_image(image)


def test_faint_smudge_is_still_empty() -> None:
    image, draw = canvas()
    draw.point([(100, 100)], fill=254)

    with pytest.raises(EmptyCanvasError):
        preprocess_image(image)


def test_a_single_dot_is_a_digit_not_an_error() -> None:
    image, draw = canvas()
    draw.ellipse([(100, 100), (118, 118)], fill=0)

    pixels = preprocess_image(image).pixels

    assert_like_mnist(pixels)
    # A symmetric blob sits in MNIST's 20x20 box with the 4-pixel margin all round.
    assert pixels[:4].max() == pixels[-4:].max() == pixels[:, :4].max() == pixels[:, -4:].max() == 0


def test_an_mnist_digit_survives_preprocessing_almost_unchanged(mnist: Mnist) -> None:
    """MNIST digits are already cropped, scaled and centred: doing it again is ~identity."""
    diffs = [
        np.abs(preprocess_ink(d.astype(np.float32) / 255).pixels.astype(np.float32) - d).mean()
        for d in mnist.test_x[:200]
    ]

    assert float(np.mean(diffs)) < 15


def test_model_input_uses_the_models_own_normalisation() -> None:
    pixels = np.arange(784, dtype=np.int64).reshape(28, 28).astype(np.uint8)
    spec = ModelSpec(norm_mean=0.5, norm_std=0.25)

    tensor = model_input(pixels, spec)

    assert tensor.shape == (1, 1, 28, 28)
    expected = (torch.from_numpy(pixels).float() / 255 - 0.5) / 0.25
    assert torch.allclose(tensor[0, 0], expected)


def test_model_input_refuses_a_model_for_other_images() -> None:
    with pytest.raises(BadImageError, match="expects input"):
        model_input(np.zeros((28, 28), np.uint8), ModelSpec(input_shape=(3, 32, 32)))


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def test_data_url_round_trip() -> None:
    image, draw = canvas()
    seven(draw, 60, 60, 120, 14)

    assert np.array_equal(
        preprocess_image(decode_data_url(data_url(image))).pixels,
        preprocess_image(image).pixels,
    )


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("hello", id="not-a-data-url"),
        pytest.param("data:text/plain;base64,aGVsbG8=", id="not-an-image-type"),
        pytest.param("data:image/png;base64,!!!", id="bad-base64"),
        pytest.param("data:image/png;base64,aGVsbG8=", id="not-png-bytes"),
        pytest.param("data:image/png;base64," + "A" * (9 * 1024 * 1024), id="too-long"),
    ],
)
def test_bad_data_urls_are_refused(url: str) -> None:
    with pytest.raises(BadImageError):
        decode_data_url(url)


def test_huge_images_are_refused_before_decoding() -> None:
    with pytest.raises(BadImageError, match="at most"):
        decode_data_url(data_url(Image.new("L", (5000, 4), 255)))


def test_to_png_enlarges_with_hard_edges() -> None:
    pixels = np.zeros((28, 28), np.uint8)
    pixels[0, 0] = 255

    image = Image.open(io.BytesIO(to_png(pixels, scale=4)))

    assert image.size == (112, 112)
    assert np.asarray(image)[:4, :4].min() == 255
    assert np.asarray(image)[4:, 4:].max() == 0


def redraw(
    digit: npt.NDArray[np.uint8], rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """An MNIST digit drawn dark-on-white onto a canvas at a random place and size."""
    size = int(rng.integers(56, CANVAS - 19))
    image, _ = canvas()
    stroke = Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC)
    left, top = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
    image.paste(stroke, (left, top))
    return image, image.resize((FRAME, FRAME), Image.Resampling.LANCZOS)


def test_redrawn_mnist_digits_are_classified_as_well_as_the_originals(
    mnist: Mnist, trained: TrainedModel
) -> None:
    """The acceptance test: preprocessing recovers what the model learned from.

    Each test digit is enlarged 2-9x and put somewhere on a 280x280 canvas, then
    preprocessed; the model must classify those within 3 points of the originals. Squashing
    the whole canvas to 28x28, as the old demo did, is shown for contrast.
    """
    model = build_model(trained.spec)
    model.load_state_dict(trained.state)
    model.eval()
    rng = np.random.default_rng(1234)
    redrawn, squashed = [], []
    for digit in mnist.test_x:
        image, naive = redraw(digit, rng)
        redrawn.append(preprocess_image(image).pixels)
        squashed.append(255 - np.asarray(naive))

    original = accuracy(model, trained.spec, mnist.test_x, mnist.test_y)
    preprocessed = accuracy(model, trained.spec, np.stack(redrawn), mnist.test_y)
    naive = accuracy(model, trained.spec, np.stack(squashed), mnist.test_y)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "showcase-accuracy.json").write_text(
        json.dumps(
            {
                "digits": len(mnist.test_y),
                "original_28x28": original,
                "redrawn_preprocessed": preprocessed,
                "redrawn_squashed": naive,
            },
            indent=2,
        )
    )

    assert original >= 0.85
    assert abs(preprocessed - original) <= 0.03, (original, preprocessed)
    assert naive < original - 0.3, (original, naive)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(),
        ModelSpec(arch="cnn"),
        ModelSpec(arch="lenet5"),
        ModelSpec(arch="resnet"),
        ModelSpec(input_shape=(784,)),
    ],
    ids=["mlp", "cnn", "lenet5", "resnet", "flat-mlp"],
)
def test_a_drawing_feeds_a_model_of_any_arch(spec: ModelSpec) -> None:
    """The canvas path makes [1, 1, 28, 28] (or the flat [1, 784] a flat MLP takes),
    normalised with the spec, for every arch of the zoo: the default CNN of McMahan et al.,
    LeNet-5 and a ResNet take it as they are built, with no reshaping of their own."""
    image, draw = canvas()
    seven(draw, 60, 50, 150, 16)
    pixels = preprocess_image(image).pixels
    state = init_state(spec, seed=5)

    batch = model_input(pixels, spec)

    assert batch.shape == (1, *spec.input_shape)
    expected = (torch.from_numpy(pixels).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(batch.reshape(28, 28), expected)
    network = build_model(spec)
    network.load_state_dict(state)
    network.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(network(batch)[0].double(), dim=0)
    loaded = load_model_bytes(model_bytes(state, spec))
    assert loaded.mode == "draw"
    prediction = loaded.predict(pixels)
    assert prediction.probabilities == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert prediction.names == tuple(f"class {i}" for i in range(10))
