"""Turn a drawing into the 28x28 digit a model trained on MNIST expects.

MNIST's digits were made this way (LeCun et al.): each digit's bounding box was scaled into a
20x20 box keeping its aspect ratio, with anti-aliasing, then placed in a 28x28 frame so that
its centre of mass sits at the centre. A model trained on them has never seen a digit that
fills the frame or sits in a corner, so squashing a whole canvas to 28x28 (as the original
demo did) hands it something unlike anything it learned. Here we repeat MNIST's steps.

Everything here is pure: images and arrays in, arrays and tensors out.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, UnidentifiedImageError

from node.shared.model import ModelSpec, normalize
from showcase.errors import BadImageError, EmptyCanvasError

FRAME = 28
"""Side of the image the model sees."""
BOX = 20
"""Side of the box the digit's longer side is scaled to (MNIST's own choice)."""
CENTRE = 14.0
"""Where MNIST puts the centre of mass, in pixel-index coordinates (measured: 14.0 +- 0.3)."""
INK_THRESHOLD = 0.1
"""Ink below this fraction of the darkest stroke is anti-aliasing fringe, not the digit."""
EMPTY_INK = 8 / 255
"""A canvas whose darkest pixel is lighter than this is empty."""
MAX_DATA_URL_CHARS = 8 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

FloatImage = npt.NDArray[np.float32]
ByteImage = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Preprocessed:
    """The digit as the model sees it (before normalisation), and where it came from."""

    pixels: ByteImage
    """uint8 [28, 28], ink high on a zero background, like MNIST."""
    bbox: tuple[int, int, int, int]
    """The ink's bounding box in the source image: top, left, bottom, right (exclusive)."""


def decode_data_url(url: str) -> Image.Image:
    """Decode the canvas's ``data:image/png;base64,...`` URL, refusing anything odd."""
    if len(url) > MAX_DATA_URL_CHARS:
        raise BadImageError("the drawing is too large to decode")
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise BadImageError("the drawing is not a base64 image data URL")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImageError(f"the drawing is not valid base64: {exc}") from exc
    return open_image(raw)


def open_image(
    raw: bytes, *, what: str = "the drawing", formats: tuple[str, ...] = IMAGE_FORMATS
) -> Image.Image:
    """Open image bytes in one of ``formats``, checking the size its header claims before any
    pixel is decoded (so a small file claiming a huge image costs nothing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=formats)
            width, height = image.size
            if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
                raise BadImageError(f"{what} is {width}x{height}; at most {MAX_IMAGE_SIDE}")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(
            f"{what} claims an enormous size; images may be at most "
            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
        ) from exc
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,  # Pillow's PNG reader raises it for some damaged chunks
    ) as exc:
        raise BadImageError(f"{what} is not a readable image: {exc}") from exc
    return image


def ink_from_image(image: Image.Image) -> FloatImage:
    """Ink in [0, 1] (1 = darkest stroke) of a dark-on-light drawing.

    Transparent pixels count as paper, so a canvas that was never filled reads as empty.
    """
    rgba = image.convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    grey = Image.alpha_composite(paper, rgba).convert("L")
    return 1.0 - np.asarray(grey, dtype=np.float32) / 255.0


def ink_bbox(ink: FloatImage) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right; exclusive) of the ink, fringe ignored."""
    peak = float(ink.max()) if ink.size else 0.0
    if peak < EMPTY_INK:
        raise EmptyCanvasError("the canvas is empty: draw a digit first")
    mask = ink >= peak * INK_THRESHOLD
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def centre_of_mass(ink: FloatImage) -> tuple[float, float]:
    """(row, column) of the ink's centre of mass in pixel-index coordinates."""
    total = float(ink.sum())
    rows = np.arange(ink.shape[0], dtype=np.float64)
    cols = np.arange(ink.shape[1], dtype=np.float64)
    return (
        float(ink.sum(axis=1) @ rows) / total,
        float(ink.sum(axis=0) @ cols) / total,
    )


def _scale_into_box(crop: FloatImage) -> FloatImage:
    """Resize so the longer side is ``BOX`` pixels, keeping the aspect ratio, anti-aliased."""
    height, width = crop.shape
    factor = BOX / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32)).resize(
        size, Image.Resampling.LANCZOS
    )
    scaled = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    peak = float(scaled.max())
    # Thin strokes lose contrast when shrunk; MNIST's strokes reach full ink, so rescale.
    return scaled / peak if peak > 0 else scaled


def preprocess_ink(ink: FloatImage) -> Preprocessed:
    """MNIST's steps on an ink map: crop, scale into 20x20, centre the mass in 28x28."""
    if ink.ndim != 2:
        raise BadImageError("expected a single-channel image")
    top, left, bottom, right = ink_bbox(ink)
    digit = _scale_into_box(ink[top:bottom, left:right])
    row, col = centre_of_mass(digit)
    height, width = digit.shape
    # Shift the centre of mass to the frame's centre, but never push ink out of the frame.
    y = min(max(round(CENTRE - row), 0), FRAME - height)
    x = min(max(round(CENTRE - col), 0), FRAME - width)
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[y : y + height, x : x + width] = digit
    pixels = np.rint(frame * 255.0).astype(np.uint8)
    return Preprocessed(pixels=pixels, bbox=(top, left, bottom, right))


def preprocess_image(image: Image.Image) -> Preprocessed:
    """A dark-on-light drawing (any size) to an MNIST-style 28x28 digit."""
    return preprocess_ink(ink_from_image(image))


def model_input(pixels: ByteImage, spec: ModelSpec) -> torch.Tensor:
    """A batch of one, normalised exactly as the model's own metadata says it was trained."""
    if spec.input_size != pixels.size:
        raise BadImageError(
            f"the model expects input {spec.input_shape}, not a {pixels.shape} image"
        )
    batch = torch.from_numpy(np.ascontiguousarray(pixels)).reshape(1, *spec.input_shape)
    return normalize(batch, spec)


def to_png(pixels: ByteImage, scale: int = 1) -> bytes:
    """PNG bytes of a uint8 image, optionally enlarged with hard pixel edges."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
