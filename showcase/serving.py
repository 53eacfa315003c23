"""What the showcase can do with a model: draw for it, upload an image to it, or say why not.

Pure functions of a model's spec and metadata, shared by the listing (which marks models it
cannot serve), the loader and the page: one place decides a model's mode, its class names
and its top classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from node.shared.model import ModelSpec
from showcase.errors import CannotServeError

Mode = Literal["draw", "upload"]
"""``draw``: the canvas (28x28 greyscale digits); ``upload``: an image file, resized."""

FRAME = 28
DRAWN_INPUT = FRAME * FRAME
IMAGE_CHANNELS = {1: "L", 3: "RGB"}
"""Input channels the upload mode can make from an image, and Pillow's mode for each."""
TOP_K = 5
TIMES = "\u00d7"
MAX_NAME_CHARS = 60


@dataclass(frozen=True, slots=True)
class Ranked:
    """One class in a top-k list: its label index, its name and its probability."""

    index: int
    name: str
    probability: float


def serve_mode(spec: ModelSpec) -> Mode:
    """How the page feeds this model; raises ``CannotServeError`` saying why it cannot.

    A 1x28x28 model of any arch is drawn on, as is an MLP over any 784 values (it flattens
    its input). Any other (C, H, W) model with 1 or 3 channels takes an uploaded image.
    """
    drawable = spec.input_shape == (1, FRAME, FRAME) or (
        spec.arch == "mlp" and spec.input_size == DRAWN_INPUT
    )
    if drawable:
        return "draw"
    if len(spec.input_shape) != 3:
        raise CannotServeError(
            f"its input {shape_text(spec)} is not an image of (channels, height, width)"
        )
    channels = spec.input_shape[0]
    if channels not in IMAGE_CHANNELS:
        raise CannotServeError(
            f"its input has {channels} channels; the showcase makes images of "
            "1 (greyscale) or 3 (RGB)"
        )
    return "upload"


def shape_text(spec: ModelSpec) -> str:
    """The input shape as people write it, joined by multiplication signs (3, 32, 32 reads
    ``3\u00d732\u00d732``)."""
    return TIMES.join(str(d) for d in spec.input_shape)


def fallback_names(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class {i}" for i in range(num_classes))


def class_names(extra: Mapping[str, str], num_classes: int) -> tuple[str, ...]:
    """The dataset's class names from a model's metadata (``class_names``, a JSON list of
    strings in label order), else ``class 0``, ``class 1``, ...

    Missing (older files), empty, malformed or of the wrong length all fall back, as does any
    single name that is not a non-empty string; long names are cut for display.
    """
    fallback = fallback_names(num_classes)
    try:
        names = json.loads(extra.get("class_names") or "[]")
    except (json.JSONDecodeError, RecursionError):
        return fallback
    if not isinstance(names, list) or len(names) != num_classes:
        return fallback
    return tuple(
        name.strip()[:MAX_NAME_CHARS] if isinstance(name, str) and name.strip() else backup
        for name, backup in zip(names, fallback, strict=True)
    )


def top_k(probabilities: Sequence[float], names: Sequence[str], k: int = TOP_K) -> list[Ranked]:
    """The ``k`` most probable classes, most probable first (ties: the lower index first)."""
    if len(names) != len(probabilities):
        raise ValueError(f"{len(names)} names for {len(probabilities)} classes")
    order = sorted(range(len(probabilities)), key=lambda i: (-probabilities[i], i))
    return [Ranked(i, names[i], float(probabilities[i])) for i in order[: max(k, 0)]]
