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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import structlog
import torch
from torch import nn

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec, build_model
from node.shared.weights import WeightsMeta, decode_weights, sha256_hex
from showcase.errors import CannotServeError, InvalidModelError
from showcase.preprocess import ByteImage, model_input
from showcase.serving import (
    Mode,
    Ranked,
    class_names,
    fallback_names,
    serve_mode,
    shape_text,
    top_k,
)

log = structlog.get_logger(__name__)

MAX_MODEL_BYTES = 64 * 1024 * 1024
"""Largest model file we read, download or accept as an upload (the default MLP is ~1 MiB)."""
CACHE_ENTRIES = 8
SUFFIX = ".safetensors"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model on offer: where it is, what its metadata says, and why it cannot be served
    if it cannot (such a model stays listed, with ``problem`` saying why)."""

    key: str
    """Unique among the models on offer: the file name, or ``upload:<sha256>`` for uploads."""
    name: str
    origin: str
    """``folder``, ``orchestrator`` or ``upload``."""
    meta: WeightsMeta | None
    """None when the metadata does not describe a model this install can build."""
    size: int
    created: datetime | None = None
    sha256: str | None = None
    problem: str | None = None
    """Why the showcase cannot serve this model; None when it can."""
    unparsed: Mapping[str, str] = field(default_factory=dict)
    """The raw metadata when ``meta`` is None, so the listing can still name its dataset."""

    @property
    def extra(self) -> Mapping[str, str]:
        return self.meta.extra if self.meta is not None else self.unparsed

    @property
    def dataset(self) -> str:
        return self.extra.get("dataset", "") or "?"

    @property
    def rounds(self) -> int | None:
        return _int_or_none(self.extra.get("rounds"))

    @property
    def nodes(self) -> int | None:
        """How many distinct nodes contributed, over all rounds."""
        return count_contributors(self.extra.get("contributors"))

    @property
    def test_accuracy(self) -> float | None:
        return _fraction_or_none(self.extra.get("test_accuracy"))

    @property
    def kind(self) -> str | None:
        """``final`` (the last round's model) or ``best (round r)`` (the best round's by the
        job's metric), as the metadata says; None for a file that does not say."""
        kind = self.extra.get("kind")
        if kind == "best":
            best_round = _int_or_none(self.extra.get("best_round"))
            return "best" if best_round is None else f"best (round {best_round})"
        return "final" if kind == "final" else None

    def label(self) -> str:
        """One line for the picker, what tells models apart first, since a narrow picker
        cuts the end off: date (or file name), accuracy, kind, then dataset, arch, input,
        rounds and nodes."""
        dated = self.created is not None and self.problem is None
        parts = [self.created.strftime("%Y-%m-%d %H:%M") if dated and self.created else self.name]
        if self.origin == "upload":
            parts.insert(0, "uploaded")
        if self.problem is not None:
            parts.append("cannot serve")
        if self.test_accuracy is not None:
            parts.append(f"acc {self.test_accuracy:.1%}")
        if self.kind is not None:
            parts.append(self.kind)
        parts.append(self.dataset)
        if self.meta is not None:
            parts += [self.meta.spec.arch, shape_text(self.meta.spec)]
        if self.rounds is not None:
            parts.append(f"{self.rounds} rounds")
        if self.nodes is not None:
            parts.append(f"{self.nodes} nodes")
        return " · ".join(parts)

    def details(self) -> dict[str, str]:
        """The metadata a person cares about, formatted for display."""
        spec = self.meta.spec if self.meta is not None else None
        details = {"file": self.name}
        if self.kind is not None:  # files saved before models said which they are do not
            details["kind"] = self.kind
        details |= {
            "dataset": self.dataset,
            "rounds": "?" if self.rounds is None else str(self.rounds),
            "nodes": "?" if self.nodes is None else str(self.nodes),
            "test accuracy": "?" if self.test_accuracy is None else f"{self.test_accuracy:.2%}",
            "created": self.created.strftime("%Y-%m-%d %H:%M:%S UTC") if self.created else "?",
            "model": "?" if spec is None else describe_arch(spec),
            "input": "?" if spec is None else shape_text(spec),
            "classes": "?" if spec is None else _classes_text(spec, self.extra),
            "size": f"{self.size / 1024:.0f} KiB",
        }
        return details


def describe_arch(spec: ModelSpec) -> str:
    """The arch and the sizes that tell its variants apart: ``cnn [32, 64] → [512]``."""
    if spec.arch == "mlp":
        return f"mlp {list(spec.hidden)}"
    if spec.arch == "resnet":
        return f"resnet-{spec.depth} {list(spec.channels)} ({spec.norm} norm)"
    return f"{spec.arch} {list(spec.channels)} → {list(spec.hidden)}"


def _classes_text(spec: ModelSpec, extra: Mapping[str, str]) -> str:
    names = class_names(extra, spec.num_classes)
    if names == fallback_names(spec.num_classes):
        return f"{spec.num_classes} (no names in the file)"
    shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
    return f"{spec.num_classes} ({shown})"


@dataclass(frozen=True, slots=True)
class Prediction:
    digit: int
    """The most probable class's index (the digit, for MNIST)."""
    confidence: float
    probabilities: tuple[float, ...]
    names: tuple[str, ...]
    """One name per class, from the metadata or ``class N``."""

    @property
    def name(self) -> str:
        return self.names[self.digit]

    def top(self, k: int = 5) -> list[Ranked]:
        return top_k(self.probabilities, self.names, k)


class LoadedModel:
    """A validated model in eval mode, ready to classify one input at a time."""

    def __init__(self, sha256: str, meta: WeightsMeta, module: nn.Module) -> None:
        self.sha256 = sha256
        self.meta = meta
        self.spec: ModelSpec = meta.spec
        self.mode: Mode = serve_mode(meta.spec)
        self.class_names = class_names(meta.extra, meta.spec.num_classes)
        self._module = module.eval()
        self._lock = threading.Lock()

    def predict(self, pixels: ByteImage) -> Prediction:
        """Class probabilities for uint8 pixels of the model's input size (a 28x28 digit),
        normalised as in training."""
        return self.classify(model_input(pixels, self.spec))

    def classify(self, batch: torch.Tensor) -> Prediction:
        """Class probabilities for a normalised batch of one."""
        with self._lock, torch.inference_mode():
            logits = self._module(batch)[0]
        probs = torch.softmax(logits.to(torch.float64), dim=0)
        best = int(torch.argmax(probs))
        values = tuple(float(p) for p in probs)
        return Prediction(best, values[best], values, self.class_names)


def load_model_bytes(data: bytes, max_bytes: int = MAX_MODEL_BYTES) -> LoadedModel:
    """Validate a model file completely and build the network it describes."""
    if len(data) > max_bytes:
        raise InvalidModelError(too_large(len(data), max_bytes))
    try:
        tensors, meta = decode_weights(data)
    except WeightsError as exc:
        raise InvalidModelError(f"not a valid fedavg model file: {exc}") from exc
    serve_mode(meta.spec)  # raises CannotServeError before anything is built
    module = build_model(meta.spec)
    module.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return LoadedModel(sha256_hex(data), meta, module)


def too_large(size: int, max_bytes: int) -> str:
    return f"the file is {size / 2**20:.1f} MiB; models may be at most {max_bytes / 2**20:.0f} MiB"


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


def api_metadata(metadata: Mapping[str, object]) -> dict[str, str]:
    """The REST API's metadata object (``model_spec`` as an object) as a file's str -> str."""
    flat = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in metadata.items()
        if k != "model_spec"
    }
    flat["model_spec"] = json.dumps(metadata.get("model_spec"))
    flat.setdefault("format", "fedavg.weights/1")
    return flat


def meta_from_api(metadata: Mapping[str, object]) -> WeightsMeta:
    """The REST API's metadata object as a ``WeightsMeta``."""
    try:
        return WeightsMeta.from_metadata(api_metadata(metadata))
    except WeightsError as exc:
        raise InvalidModelError(str(exc)) from exc


def read_listing(metadata: Mapping[str, str]) -> tuple[WeightsMeta | None, str | None]:
    """A listed file's metadata, and why the showcase cannot serve it (None when it can):
    an arch this install does not know, a spec that fails its checks, an input with no mode.
    """
    try:
        meta = WeightsMeta.from_metadata(metadata)
    except WeightsError as exc:
        return None, str(exc)
    try:
        serve_mode(meta.spec)
    except CannotServeError as exc:
        return meta, str(exc)
    return meta, None


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
