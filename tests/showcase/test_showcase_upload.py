"""The upload mode's pure core: an image file in, a model's input and its top 5 out.

Images are built so that the right answer is known exactly (uniform regions survive a
bilinear resize unchanged), and models' answers are recomputed here from the spec and the
weights with ``node.shared`` alone, not through the showcase.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from showcase_support import CIFAR10_NAMES, CIFAR_SPEC, cifar_model_bytes, model_bytes, png_bytes

from node.shared.model import ModelSpec, build_model, init_state
from showcase.errors import BadImageError, CannotServeError
from showcase.serving import class_names, fallback_names, serve_mode, shape_text, top_k
from showcase.upload import (
    MAX_IMAGE_BYTES,
    centre_crop_box,
    decode_upload,
    predict_upload,
    prepare_upload,
    preview_png,
)

GREY_28 = ModelSpec(arch="cnn", channels=(4, 8), hidden=(16,))
GREY_64 = ModelSpec(arch="lenet5", input_shape=(1, 64, 64), norm_mean=0.5, norm_std=0.2)


def framed(size: tuple[int, int], inner: tuple[int, int, int, int], fill: object) -> Image.Image:
    """A blue RGB image with the box ``inner`` (left, top, right, bottom) painted ``fill``."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste(Image.new("RGB", (inner[2] - inner[0], inner[3] - inner[1]), fill), inner[:2])  # type: ignore[arg-type]
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# --- decode, crop, resize, normalise -------------------------------------------------------


def test_a_wide_photo_for_a_cifar_model_is_centre_cropped_resized_and_normalised() -> None:
    # 300x200: the centred 200x200 square is red, the side bands blue. A squash would let
    # the blue in; HWC left as it is would scramble the channels.
    image = framed((300, 200), (50, 0, 250, 200), (255, 0, 0))

    prepared = prepare_upload(png_bytes(image), CIFAR_SPEC)

    assert prepared.pixels.shape == (3, 32, 32)
    assert prepared.pixels.dtype == np.uint8
    assert (prepared.pixels[0] == 255).all()
    assert (prepared.pixels[1:] == 0).all()
    assert prepared.batch.shape == (1, 3, 32, 32)
    mean, std = torch.tensor(CIFAR_SPEC.norm_mean), torch.tensor(CIFAR_SPEC.norm_std)
    expected = ((torch.tensor([1.0, 0.0, 0.0]) - mean) / std).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(prepared.batch[0], expected)


def test_a_tall_colour_image_for_a_1x64x64_model_is_greyscale_and_cropped_to_the_middle() -> None:
    # 100x300: the centred 100x100 square is pure red, above and below blue.
    image = framed((100, 300), (0, 100, 100, 200), (255, 0, 0))

    prepared = prepare_upload(png_bytes(image), GREY_64)

    assert prepared.pixels.shape == (1, 64, 64)
    luma = round(0.299 * 255)  # ITU-R 601, Pillow's L conversion
    assert np.abs(prepared.pixels.astype(int) - luma).max() <= 1
    assert prepared.batch.shape == (1, 1, 64, 64)
    assert torch.allclose(
        prepared.batch, (torch.from_numpy(prepared.pixels).float() / 255 - 0.5) / 0.2
    )


def test_a_1x28x28_model_gets_its_shape_and_transparency_reads_as_white() -> None:
    image = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (30, 30), (0, 0, 0, 255)), (30, 30))

    prepared = prepare_upload(png_bytes(image), GREY_28)

    assert prepared.pixels.shape == (1, 28, 28)
    assert prepared.pixels[0, 0, 0] == 255  # transparent corner: white paper
    assert prepared.pixels[0, 14, 14] == 0  # the opaque black middle
    assert prepared.batch.shape == (1, 1, 28, 28)


def test_jpeg_and_16_bit_greys_are_read_too() -> None:
    photo = prepare_upload(jpeg_bytes(Image.new("RGB", (64, 48), (10, 200, 30))), CIFAR_SPEC)
    wide = Image.fromarray(np.full((40, 40), 65535, np.uint16))
    grey = prepare_upload(png_bytes(wide), GREY_64)

    assert np.abs(photo.pixels[:, 5, 5].astype(int) - [10, 200, 30]).max() <= 3
    assert (grey.pixels == 255).all()


def test_shrinking_is_antialiased_not_aliased() -> None:
    """A one-pixel checkerboard shrunk 8x is grey; a filter without antialiasing (nearest,
    or bilinear that samples 2x2) would give black and white."""
    board = ((np.indices((256, 256)).sum(axis=0) % 2) * 255).astype(np.uint8)

    pixels = prepare_upload(
        png_bytes(Image.fromarray(board)),
        ModelSpec(arch="cnn", input_shape=(1, 32, 32), channels=(4,), hidden=(8,)),
    ).pixels

    assert np.abs(pixels.astype(int) - 128).max() <= 8


@pytest.mark.parametrize(
    ("size", "aspect", "box"),
    [
        ((300, 200), 1.0, (50, 0, 250, 200)),
        ((100, 300), 1.0, (0, 100, 100, 200)),
        ((300, 300), 2.0, (0, 75, 300, 225)),
        ((64, 32), 2.0, (0, 0, 64, 32)),
        ((1, 1000), 1.0, (0, 499, 1, 500)),
    ],
)
def test_centre_crop_box_is_the_largest_centred_box_of_the_models_aspect(
    size: tuple[int, int], aspect: float, box: tuple[int, int, int, int]
) -> None:
    assert centre_crop_box(*size, aspect) == box


def test_the_preview_is_the_models_input_enlarged() -> None:
    prepared = prepare_upload(png_bytes(framed((64, 64), (0, 0, 32, 64), (0, 255, 0))), CIFAR_SPEC)

    preview = Image.open(io.BytesIO(preview_png(prepared.pixels)))

    assert preview.size == (128, 128)
    assert preview.getpixel((10, 64)) == (0, 255, 0)
    assert preview.getpixel((120, 64)) == (0, 0, 255)


# --- refusals ------------------------------------------------------------------------------


def huge_header_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (CRC fixed, so it parses)."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data: bytes = png_bytes(Image.fromarray(noise))
    return data[: len(data) // 2]


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: b"", "empty", id="empty"),
        pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable", id="corrupt"),
        pytest.param(lambda: b"GIF89a, or so it says", "not a readable", id="junk"),
        pytest.param(truncated_png, "not a readable", id="truncated"),
        pytest.param(gif, "not a readable", id="gif-not-accepted"),
        pytest.param(lambda: huge_header_png(100_000, 100_000), "at most 4096", id="huge-header"),
        pytest.param(lambda: huge_header_png(5000, 10), "5000x10", id="wide-header"),
    ],
)
def test_bad_image_files_are_refused_with_a_message(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(BadImageError, match=message):
        prepare_upload(make(), CIFAR_SPEC)


def test_an_oversized_file_is_refused_before_it_is_decoded() -> None:
    image = png_bytes(Image.new("RGB", (64, 64), "white"))

    with pytest.raises(BadImageError, match="at most"):
        decode_upload(image, max_bytes=len(image) - 1)
    with pytest.raises(BadImageError, match="at most 8 MiB"):
        decode_upload(image + b"\x00" * MAX_IMAGE_BYTES)
    assert decode_upload(image, max_bytes=len(image)).size == (64, 64)


# --- modes, names, top 5 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "mode"),
    [
        (ModelSpec(), "draw"),
        (GREY_28, "draw"),
        (ModelSpec(arch="lenet5"), "draw"),
        (ModelSpec(arch="resnet", channels=(4,), depth=8), "draw"),
        (ModelSpec(input_shape=(784,)), "draw"),
        (CIFAR_SPEC, "upload"),
        (GREY_64, "upload"),
        (ModelSpec(input_shape=(3, 32, 32), hidden=(8,), dropout=()), "upload"),
    ],
    ids=["mlp", "cnn", "lenet5", "resnet", "flat-mlp", "cifar", "grey-64", "mlp-colour"],
)
def test_the_serving_mode_follows_the_input_shape(spec: ModelSpec, mode: str) -> None:
    assert serve_mode(spec) == mode


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (ModelSpec(arch="cnn", input_shape=(5, 32, 32), channels=(4,), hidden=(8,)), "5 channels"),
        (ModelSpec(arch="cnn", input_shape=(2, 28, 28), channels=(4,), hidden=(8,)), "2 channels"),
        (ModelSpec(input_shape=(3072,), hidden=(8,), dropout=()), "3072 is not an image"),
    ],
    ids=["five-channels", "two-channels", "flat"],
)
def test_models_the_showcase_cannot_serve_say_why(spec: ModelSpec, reason: str) -> None:
    with pytest.raises(CannotServeError, match=reason):
        serve_mode(spec)


def test_shape_text() -> None:
    assert shape_text(CIFAR_SPEC) == "3\u00d732\u00d732"
    assert shape_text(ModelSpec(input_shape=(784,))) == "784"


def test_class_names_come_from_the_metadata() -> None:
    extra = {"class_names": json.dumps(CIFAR10_NAMES)}

    assert class_names(extra, 10) == tuple(CIFAR10_NAMES)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"class_names": "[]"},
        {"class_names": json.dumps(["a", "b"])},
        {"class_names": "{not json"},
        {"class_names": json.dumps({"0": "zero"})},
    ],
    ids=["missing", "empty", "wrong-length", "not-json", "not-a-list"],
)
def test_class_names_fall_back_to_numbered_classes(extra: dict[str, str]) -> None:
    assert class_names(extra, 3) == ("class 0", "class 1", "class 2")
    assert fallback_names(3) == ("class 0", "class 1", "class 2")


def test_a_single_unusable_name_falls_back_alone_and_long_names_are_cut() -> None:
    extra = {"class_names": json.dumps(["cat", 7, "  ", "x" * 500])}

    assert class_names(extra, 4) == ("cat", "class 1", "class 2", "x" * 60)


def test_top_k_is_most_probable_first_with_ties_in_label_order() -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    probabilities = [0.1, 0.3, 0.05, 0.3, 0.2, 0.05]

    ranked = top_k(probabilities, names, 5)

    assert [(r.index, r.name, r.probability) for r in ranked] == [
        (1, "b", 0.3),
        (3, "d", 0.3),
        (4, "e", 0.2),
        (0, "a", 0.1),
        (2, "c", 0.05),
    ]
    assert [r.name for r in top_k(probabilities, names, 2)] == ["b", "d"]
    assert len(top_k(probabilities[:3], names[:3], 5)) == 3
    with pytest.raises(ValueError, match="names"):
        top_k(probabilities, names[:2])


# --- the helper, end to end ----------------------------------------------------------------


def expected_top5(
    spec: ModelSpec, seed: int, colour: tuple[int, ...], names: list[str]
) -> list[tuple[str, float]]:
    """What the model says about a uniform image, computed here without the showcase."""
    model = build_model(spec)
    model.load_state_dict(init_state(spec, seed=seed))
    model.eval()
    mean, std = torch.tensor(spec.norm_mean), torch.tensor(spec.norm_std)
    pixel = (torch.tensor(colour, dtype=torch.float32) / 255 - mean) / std
    x = pixel.view(1, -1, 1, 1).expand(1, *spec.input_shape)
    with torch.inference_mode():
        probs = torch.softmax(model(x)[0].double(), dim=0)
    order = sorted(range(len(names)), key=lambda i: -float(probs[i]))[:5]
    return [(names[i], float(probs[i])) for i in order]


def test_predict_upload_runs_a_model_file_on_png_bytes(tmp_path: Path) -> None:
    path = tmp_path / "cifar.safetensors"
    path.write_bytes(cifar_model_bytes(seed=4))
    colour = (200, 120, 40)

    top5 = predict_upload(path, png_bytes(Image.new("RGB", (120, 90), colour)))

    expected = expected_top5(CIFAR_SPEC, 4, colour, CIFAR10_NAMES)
    assert [name for name, _ in top5] == [name for name, _ in expected]
    assert [p for _, p in top5] == pytest.approx([p for _, p in expected], abs=1e-5)
    assert [p for _, p in top5] == sorted((p for _, p in top5), reverse=True)


def test_predict_upload_names_classes_by_number_when_the_metadata_has_none() -> None:
    data = model_bytes(init_state(GREY_64, seed=2), GREY_64)

    top5 = predict_upload(data, png_bytes(Image.new("L", (64, 64), 90)), k=3)

    expected = expected_top5(GREY_64, 2, (90,), list(fallback_names(10)))[:3]
    assert [name for name, _ in top5] == [name for name, _ in expected]
    assert all(name.startswith("class ") for name, _ in top5)


def test_predict_upload_refuses_a_model_it_cannot_serve() -> None:
    spec = ModelSpec(input_shape=(3072,), hidden=(8,), dropout=())

    with pytest.raises(CannotServeError, match="not an image"):
        predict_upload(model_bytes(init_state(spec, seed=1), spec), b"")
