"""Saved models: find them, describe them, load them safely, and predict with them.

A model file is a safetensors state dict whose metadata carries the model spec, so the
architecture is read from the file itself and no setting has to match the trainer's.
Files are decoded with ``node.shared.weights.decode_weights`` (safetensors only, never unpickled,
every tensor checked against the spec) and loaded models are cached by their sha256, so
re-picking a model or many browser sessions on one model cost one decode.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import structlog
import torch
from torch import nn

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec, build_model
from node.shared.weights import WeightsMeta, decode_weights, sha256_hex
from showcase.errors import InvalidModelError
from showcase.preprocess import FRAME, ByteImage, model_input

log = structlog.get_logger(__name__)

MAX_MODEL_BYTES = 64 * 1024 * 1024
"""Largest model file we read, download or accept as an upload (the default MLP is ~1 MiB)."""
CACHE_ENTRIES = 8
SUFFIX = ".safetensors"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model a person can pick: where it is and what its metadata says about it."""

    key: str
    """Unique among the models on offer: the file name, or ``upload:<sha256>`` for uploads."""
    name: str
    origin: str
    """``folder``, ``orchestrator`` or ``upload``."""
    meta: WeightsMeta
    size: int
    created: datetime | None = None
    sha256: str | None = None

    @property
    def dataset(self) -> str:
        return self.meta.extra.get("dataset", "") or "?"

    @property
    def rounds(self) -> int | None:
        return _int_or_none(self.meta.extra.get("rounds"))

    @property
    def nodes(self) -> int | None:
        """How many distinct nodes contributed, over all rounds."""
        return count_contributors(self.meta.extra.get("contributors"))

    @property
    def test_accuracy(self) -> float | None:
        return _fraction_or_none(self.meta.extra.get("test_accuracy"))

    def label(self) -> str:
        """One line for the picker: date, dataset, rounds, nodes, accuracy."""
        parts = [self.created.strftime("%Y-%m-%d %H:%M") if self.created else self.name]
        parts.append(self.dataset)
        if self.rounds is not None:
            parts.append(f"{self.rounds} rounds")
        if self.nodes is not None:
            parts.append(f"{self.nodes} nodes")
        if self.test_accuracy is not None:
            parts.append(f"{self.test_accuracy:.1%}")
        if self.origin == "upload":
            parts.insert(0, "uploaded")
        return " · ".join(parts)

    def details(self) -> dict[str, str]:
        """The metadata a person cares about, formatted for display."""
        return {
            "file": self.name,
            "dataset": self.dataset,
            "rounds": "?" if self.rounds is None else str(self.rounds),
            "nodes": "?" if self.nodes is None else str(self.nodes),
            "test accuracy": "?" if self.test_accuracy is None else f"{self.test_accuracy:.2%}",
            "created": self.created.strftime("%Y-%m-%d %H:%M:%S UTC") if self.created else "?",
            "model": f"{self.meta.spec.arch} {list(self.meta.spec.hidden)}",
            "size": f"{self.size / 1024:.0f} KiB",
        }


@dataclass(frozen=True, slots=True)
class Prediction:
    digit: int
    confidence: float
    probabilities: tuple[float, ...]


class LoadedModel:
    """A validated model in eval mode, ready to classify one drawing at a time."""

    def __init__(self, sha256: str, meta: WeightsMeta, module: nn.Module) -> None:
        self.sha256 = sha256
        self.meta = meta
        self.spec: ModelSpec = meta.spec
        self._module = module.eval()
        self._lock = threading.Lock()

    def predict(self, pixels: ByteImage) -> Prediction:
        """Class probabilities for a uint8 28x28 digit, normalised as in training."""
        batch = model_input(pixels, self.spec)
        with self._lock, torch.inference_mode():
            logits = self._module(batch)[0]
        probs = torch.softmax(logits.to(torch.float64), dim=0)
        digit = int(torch.argmax(probs))
        return Prediction(digit, float(probs[digit]), tuple(float(p) for p in probs))


def check_drawable(spec: ModelSpec) -> None:
    """The app draws 28x28 greyscale digits; refuse models that expect anything else (an
    MLP flattens, so any 784 inputs do; a convolution needs the image itself)."""
    image = spec.input_shape == (1, FRAME, FRAME)
    if spec.input_size != FRAME * FRAME or (spec.arch != "mlp" and not image):
        raise InvalidModelError(
            f"this model expects {list(spec.input_shape)} inputs; the app draws 28x28 digits"
        )


def load_model_bytes(data: bytes, max_bytes: int = MAX_MODEL_BYTES) -> LoadedModel:
    """Validate a model file completely and build the network it describes."""
    if len(data) > max_bytes:
        raise InvalidModelError(
            f"the file is {len(data) / 2**20:.1f} MiB; models may be at most "
            f"{max_bytes / 2**20:.0f} MiB"
        )
    try:
        tensors, meta = decode_weights(data)
    except WeightsError as exc:
        raise InvalidModelError(f"not a valid fedavg model file: {exc}") from exc
    check_drawable(meta.spec)
    module = build_model(meta.spec)
    module.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return LoadedModel(sha256_hex(data), meta, module)


class ModelCache:
    """Loaded models by sha256, least recently used dropped first; safe across threads."""

    def __init__(self, entries: int = CACHE_ENTRIES, max_bytes: int = MAX_MODEL_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries = entries
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(sha256)
            if model is not None:
                self._models.move_to_end(sha256)
            return model

    def load(self, data: bytes) -> LoadedModel:
        """The model in ``data``, decoded once per distinct file content."""
        if len(data) > self.max_bytes:
            return load_model_bytes(data, self.max_bytes)  # raises the size error
        cached = self.get(sha256_hex(data))
        if cached is not None:
            return cached
        model = load_model_bytes(data, self.max_bytes)
        with self._lock:
            self._models[model.sha256] = model
            self._models.move_to_end(model.sha256)
            while len(self._models) > self._entries:
                self._models.popitem(last=False)
        log.info("model_loaded", sha256=model.sha256[:12], job_id=model.meta.job_id)
        return model

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)


class ModelSource(Protocol):
    """Where saved models come from: a folder, or the orchestrator's REST API."""

    @property
    def description(self) -> str: ...

    def list_models(self) -> list[ModelInfo]:
        """Every usable model, newest first. Raises ``SourceError`` when unreachable."""
        ...

    def fetch(self, info: ModelInfo) -> bytes:
        """The model file's bytes. Raises ``NoModelError`` when it is gone."""
        ...


def load_model(source: ModelSource, cache: ModelCache, info: ModelInfo) -> LoadedModel:
    """A picked model, from the cache when its sha256 is known and already loaded."""
    if info.sha256:
        cached = cache.get(info.sha256)
        if cached is not None:
            return cached
    return cache.load(source.fetch(info))


def upload_info(filename: str, model: LoadedModel, size: int) -> ModelInfo:
    """Describe an uploaded model the same way as a saved one."""
    return ModelInfo(
        key=f"upload:{model.sha256}",
        name=Path(filename).name or "upload.safetensors",
        origin="upload",
        meta=model.meta,
        size=size,
        created=parse_created(model.meta.extra.get("created")),
        sha256=model.sha256,
    )


def newest_first(models: list[ModelInfo]) -> list[ModelInfo]:
    epoch = datetime.fromtimestamp(0, UTC)
    return sorted(models, key=lambda m: (m.created or epoch, m.name), reverse=True)


def parse_created(text: str | None) -> datetime | None:
    """An ISO-8601 time as aware UTC (naive times are taken to be UTC)."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def count_contributors(text: str | None) -> int | None:
    """Distinct node names in the ``contributors`` metadata (a JSON list per round)."""
    if not text:
        return None
    try:
        rounds = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(rounds, list):
        return None
    names = {
        name
        for names in rounds
        if isinstance(names, list)
        for name in names
        if isinstance(name, str)
    }
    return len(names)


def meta_from_api(metadata: Mapping[str, object]) -> WeightsMeta:
    """The REST API's metadata object (``model_spec`` as an object) as a ``WeightsMeta``."""
    flat = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in metadata.items()
        if k != "model_spec"
    }
    flat["model_spec"] = json.dumps(metadata.get("model_spec"))
    flat.setdefault("format", "fedavg.weights/1")
    try:
        return WeightsMeta.from_metadata(flat)
    except WeightsError as exc:
        raise InvalidModelError(str(exc)) from exc


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _fraction_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and 0 <= value <= 1 else None


def no_model_message(source: ModelSource) -> str:
    return (
        f"No model yet in {source.description}. Train one with `fedavg-demo` "
        "(or a `fedavg-server` job), or upload a `.safetensors` model file."
    )
