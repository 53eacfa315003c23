"""The upload mode: an image file turned into the input a model of any (C, H, W) expects.

For models that do not take 28x28 digits (CIFAR-10's 3x32x32, an imported folder's 1x64x64),
the page takes a PNG or JPEG instead of a drawing. The steps, each a pure function:

1. **Bounded decode.** Files over ``MAX_IMAGE_BYTES`` are refused unread, and so is an
   image whose header claims a side over ``MAX_IMAGE_SIDE`` pixels, before any pixel is
   decoded; a damaged file is a ``BadImageError`` with a message, never a traceback.
2. **Channels.** Transparent pixels are laid on white, then the image is converted to
   greyscale (``L``) for a 1-channel model or ``RGB`` for a 3-channel one (JPEG's CMYK,
   palettes and 16-bit greys included).
3. **Crop and resize.** The largest centred box of the model's aspect ratio (a square for
   H = W) is cut out, so nothing is squashed, then resized to W x H with Pillow's bilinear
   filter, which antialiases when it shrinks (as torchvision's ``Resize`` does by default).
4. **Normalise** with the mean and std in the model's own metadata, as in training.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from node.shared.model import ModelSpec
from showcase.errors import BadImageError, CannotServeError, InvalidModelError
from showcase.models import MAX_MODEL_BYTES, load_model_bytes, too_large
from showcase.preprocess import ByteImage, model_input, open_image, to_png
from showcase.serving import IMAGE_CHANNELS, TOP_K, shape_text

MAX_IMAGE_BYTES = 8 * 1024 * 1024
"""Largest image file accepted (a 12-megapixel phone JPEG is ~4 MiB)."""
UPLOAD_FORMATS = ("PNG", "JPEG")
ACCEPT = ".png,.jpg,.jpeg"
PREVIEW_PX = 128
"""The preview of what the model sees is enlarged (hard pixel edges) to about this size."""


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An uploaded image as the model sees it."""

    pixels: ByteImage
    """uint8 [C, H, W], before normalisation."""
    batch: torch.Tensor
    """float32 [1, *input_shape], normalised with the model's mean and std."""


def decode_upload(raw: bytes, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """A PNG or JPEG file's image, refusing large files, absurd sizes and damage."""
    if not raw:
        raise BadImageError("the file is empty")
    if len(raw) > max_bytes:
        raise BadImageError(
            f"the file is {len(raw) / 2**20:.1f} MiB; images may be at most "
            f"{max_bytes / 2**20:.0f} MiB"
        )
    image = open_image(raw, what="the file", formats=UPLOAD_FORMATS)
    try:
        return ImageOps.exif_transpose(image)  # a phone photo the right way up
    except (OSError, ValueError, SyntaxError, TypeError) as exc:  # a broken EXIF block
        raise BadImageError(f"the image's orientation data is damaged: {exc}") from exc


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """The image in greyscale (1 channel) or RGB (3), transparency laid on white."""
    mode = IMAGE_CHANNELS.get(channels)
    if mode is None:
        raise CannotServeError(f"cannot make a {channels}-channel image; only 1 or 3")
    if image.mode.startswith("I"):  # 16-bit greys (PNG) to 8-bit
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def centre_crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box (left, top, right, bottom) of ``aspect`` = width / height."""
    if width / height > aspect:
        crop_w, crop_h = max(1, round(height * aspect)), height
    else:
        crop_w, crop_h = width, max(1, round(width / aspect))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def fit_image(image: Image.Image, spec: ModelSpec) -> ByteImage:
    """Steps 2 and 3: channels, centre crop and resize; uint8 [C, H, W]."""
    if len(spec.input_shape) != 3:
        raise CannotServeError(f"the model's input {shape_text(spec)} is not an image")
    channels, height, width = spec.input_shape
    converted = to_channels(image, channels)
    box = centre_crop_box(converted.width, converted.height, width / height)
    # Crop first: resizing a box of the whole image would blend in pixels beside the box.
    resized = converted.crop(box).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.array(resized, dtype=np.uint8)  # a writable copy, as torch wants
    if pixels.ndim == 2:
        return np.ascontiguousarray(pixels[np.newaxis])
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # HWC to the datasets' CHW


def prepare_upload(raw: bytes, spec: ModelSpec, max_bytes: int = MAX_IMAGE_BYTES) -> PreparedImage:
    """An uploaded file's bytes to the normalised batch of one that ``spec`` takes."""
    pixels = fit_image(decode_upload(raw, max_bytes), spec)
    return PreparedImage(pixels, model_input(pixels, spec))


def preview_png(pixels: ByteImage) -> bytes:
    """PNG of what the model sees (uint8 [C, H, W]), enlarged with hard edges."""
    image = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    return to_png(image, scale=max(1, PREVIEW_PX // max(image.shape[:2])))


def preview_data_url(pixels: ByteImage) -> str:
    return "data:image/png;base64," + base64.b64encode(preview_png(pixels)).decode("ascii")


def predict_upload(
    model_file: Path | str | bytes, image: bytes, k: int = TOP_K
) -> list[tuple[str, float]]:
    """The upload path end to end: a model file (path or bytes) and a PNG/JPEG's bytes to
    the top-``k`` classes as (name, probability), most probable first.

    Validates the model as the page does (``load_model_bytes``: safetensors only, every
    tensor checked) and raises ``ShowcaseError`` subclasses with the page's messages.
    """
    if isinstance(model_file, bytes):
        data = model_file
    else:
        path = Path(model_file)
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise InvalidModelError(too_large(path.stat().st_size, MAX_MODEL_BYTES))
        data = path.read_bytes()
    model = load_model_bytes(data, MAX_MODEL_BYTES)
    prediction = model.classify(prepare_upload(image, model.spec).batch)
    return [(r.name, r.probability) for r in prediction.top(k)]
