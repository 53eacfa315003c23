"""The node <-> orchestrator WebSocket protocol: one frozen dataclass per frame, one codec.

Frames are JSON text with a ``type`` field. ``encode``/``decode`` are the only places that
touch the JSON shape; everything else works with typed frames. Bulk bytes (shards, weights)
never ride the socket: frames carry URLs and sha256 digests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeVar, get_type_hints
from urllib.parse import urlencode

from node.shared.errors import ProtocolError, SpecError
from node.shared.model import ModelSpec

PROTOCOL_VERSION = 1
FLOAT_MAX = 1.7976931348623157e308  # sys.float_info.max
MAX_FRAME_BYTES = 64 * 1024
MAX_TEXT = 4096
MIN_SECRET, MAX_SECRET = 16, 256  # a node's id secret: 32 random bytes, urlsafe, is 43
MAX_LOCAL_EPOCHS = 1000  # TrainConfig.local_epochs and Progress.epochs
MAX_PROXIMAL_MU = 1e4  # FedProx's mu: the paper tries 0.001..1; far above is a typo
DATASET_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""A dataset's name, on the server (``/train/{name}``) and as a node announces its own."""
MAX_OWN_DATASETS = 32  # datasets one node may announce
MAX_CLASSES = 1000  # as node.shared.local_data's DataLimits
MAX_LIST = 1000  # items in a list field of a frame
ID_TAKEN = "id_taken"  # Error.code answering a hello whose secret is not its id's


WireDtype = Literal["float32", "bfloat16", "float16"]
"""How weights travel (both ways) and sit in checkpoints. Half-width types halve the bytes
to send, receive, hash and fold, at a rounding cost measured in the benchmarks; training,
the average and the final model stay float32."""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Local-training hyper-parameters the server pushes with each job."""

    lr: float = 1e-3
    batch_size: int = 32
    optimizer: Literal["adam", "sgd"] = "adam"
    local_epochs: int = 1
    max_batches: int | None = None  # cap on local steps per round (None: the whole epoch)
    validation_split: float | None = None  # None: the node's own VALIDATION_SPLIT
    seed: int = 0
    wire_dtype: WireDtype = "float32"
    # FedProx (Li et al. 2020; Flower's ``proximal_mu``): each node adds
    # (mu / 2) * ||w - w_global||^2 to its local loss. 0 is plain FedAvg, bit for bit.
    proximal_mu: float = 0.0
    # Each node keeps its optimizer's state (Adam's moments, SGD's nothing) from one round
    # of a job to the next instead of starting it afresh on every global model.
    keep_optimizer_state: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append("lr must be a positive finite number")
        if not 1 <= self.batch_size <= 1 << 16:
            problems.append("batch_size must be 1..65536")
        if not 1 <= self.local_epochs <= MAX_LOCAL_EPOCHS:
            problems.append(f"local_epochs must be 1..{MAX_LOCAL_EPOCHS}")
        if self.max_batches is not None and self.max_batches < 1:
            problems.append("max_batches must be >= 1")
        if self.validation_split is not None and not 0 <= self.validation_split < 1:
            problems.append("validation_split must be within [0, 1)")
        if not (math.isfinite(self.proximal_mu) and 0 <= self.proximal_mu <= MAX_PROXIMAL_MU):
            problems.append(f"proximal_mu must be a finite number within [0, {MAX_PROXIMAL_MU:g}]")
        if self.wire_dtype not in typing.get_args(WireDtype):
            problems.append(f"wire_dtype must be one of {', '.join(typing.get_args(WireDtype))}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Hello:
    type: ClassVar[str] = "hello"
    node_id: str
    name: str
    capacity: float  # samples/s on the default model, measured by the node
    device: str
    version: str
    # Proves the node owns ``node_id``: the server binds an id to the first secret it sees
    # (stored hashed) and refuses a hello for that id with any other.
    secret: str = dataclasses.field(repr=False)
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not MIN_SECRET <= len(self.secret) <= MAX_SECRET:
            raise ValueError(f"secret must be {MIN_SECRET}..{MAX_SECRET} characters")


@dataclass(frozen=True, slots=True)
class Progress:
    type: ClassVar[str] = "progress"
    # A diverging model's loss is NaN or Inf: that is data about the node, not a broken
    # frame, so it decodes as None ("no number") instead of closing the socket.
    readings: ClassVar[frozenset[str]] = frozenset({"loss"})
    job_id: str
    round: int
    batch: int
    batches: int
    loss: float | None
    # Which local epoch the batch is in, 1-based; a node from before epochs were reported
    # sends neither, and that reads as the one epoch.
    epoch: int = 1
    epochs: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.epoch <= self.epochs <= MAX_LOCAL_EPOCHS:
            raise ValueError(f"epoch must be within 1..epochs, and epochs 1..{MAX_LOCAL_EPOCHS}")


@dataclass(frozen=True, slots=True)
class OwnDataset:
    """A dataset a node holds, as it describes it: its schema, counts and a content
    fingerprint, never a sample; its label counts only when its owner allows
    (``--share-label-counts``)."""

    name: str
    input_shape: tuple[int, ...]  # (C, H, W)
    class_names: tuple[str, ...]
    train_samples: int
    test_samples: int
    fingerprint: str  # sha256 of the decoded content (node.local_datasets.fingerprint)
    dtype: Literal["uint8"] = "uint8"
    label_counts: tuple[int, ...] | None = None  # train samples per class

    def __post_init__(self) -> None:
        problems = []
        if not DATASET_NAME_RE.fullmatch(self.name):
            problems.append(f"name must match {DATASET_NAME_RE.pattern}")
        if len(self.input_shape) != 3 or not 1 <= self.input_shape[0] <= 4:
            problems.append("input_shape must be [C, H, W] with C of 1..4")
        elif not all(1 <= side <= 4096 for side in self.input_shape[1:]):
            problems.append("input_shape: each side must be 1..4096")
        if not 2 <= len(self.class_names) <= MAX_CLASSES:
            problems.append(f"class_names: 2..{MAX_CLASSES} classes")
        if not (1 <= self.train_samples <= MAX_COUNT and 1 <= self.test_samples <= MAX_COUNT):
            problems.append(f"train_samples and test_samples must be 1..{MAX_COUNT}")
        if len(self.fingerprint) != 64 or not set(self.fingerprint) <= set("0123456789abcdef"):
            problems.append("fingerprint must be 64 lower-case hex digits (a sha256)")
        if self.label_counts is not None and (
            len(self.label_counts) != len(self.class_names)
            or any(c < 0 for c in self.label_counts)
            or sum(self.label_counts) != self.train_samples
        ):
            problems.append("label_counts: one count >= 0 per class, summing to train_samples")
        if problems:
            raise ValueError(f"dataset {self.name[:64]!r}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class OwnData:
    """The datasets a node holds (node -> server), sent after each ``welcome``: the data
    never leaves the node, this is what the server may know of it."""

    type: ClassVar[str] = "own_data"
    datasets: tuple[OwnDataset, ...]

    def __post_init__(self) -> None:
        names = [d.name for d in self.datasets]
        if not 1 <= len(names) <= MAX_OWN_DATASETS:
            raise ValueError(f"datasets: 1..{MAX_OWN_DATASETS} of them")
        if len(set(names)) != len(names):
            raise ValueError("datasets: each name once")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A node's reading of one global model on its own test split (node -> server): in a
    job over the nodes' own data, each round's weights before it trains on them, and the
    final model when asked (``evaluate``). Counts, not samples; ``correct`` of ``samples``
    right, so a weighted mean over nodes is exact."""

    type: ClassVar[str] = "evaluation"
    readings: ClassVar[frozenset[str]] = frozenset({"loss"})  # a diverged model's loss
    job_id: str
    round: int  # the global model after this round (0: the initial one)
    samples: int
    correct: int
    loss: float | None  # mean cross-entropy

    def __post_init__(self) -> None:
        if not 0 <= self.round <= MAX_COUNT:
            raise ValueError(f"round must be within 0..{MAX_COUNT}")
        if not 1 <= self.samples <= MAX_COUNT or not 0 <= self.correct <= self.samples:
            raise ValueError("samples must be 1..2**31 and correct within 0..samples")
        if self.loss is not None and self.loss < 0:
            raise ValueError("loss must be >= 0")


@dataclass(frozen=True, slots=True)
class Left:
    type: ClassVar[str] = "left"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    node_id: str
    session_token: str
    server_version: str


@dataclass(frozen=True, slots=True)
class Train:
    """Start (or resume) a job: train ``round`` from the global weights at ``weights_url``.

    ``data_mode`` says where the samples are. ``shards``: the server's, at ``shard_url``
    (safetensors with that sha256). ``local``: the node's own dataset named ``dataset``,
    whose fingerprint must be ``shard_sha256`` (what it announced); ``shard_url`` is empty,
    and the node evaluates each round's weights on its test split before it trains."""

    type: ClassVar[str] = "train"
    job_id: str
    dataset: str
    shard_url: str
    shard_sha256: str
    model_spec: ModelSpec
    config: TrainConfig
    rounds: int
    round: int
    weights_url: str
    weights_sha256: str
    data_mode: Literal["shards", "local"] = "shards"


@dataclass(frozen=True, slots=True)
class Evaluate:
    """Evaluate the model at ``weights_url`` on the test split of the node's own dataset
    ``dataset`` and answer with an ``evaluation`` frame for ``job_id`` and ``round``: a
    job's final model, or a saved model in an evaluation-only job."""

    type: ClassVar[str] = "evaluate"
    job_id: str
    dataset: str
    round: int
    model_spec: ModelSpec
    weights_url: str
    weights_sha256: str


@dataclass(frozen=True, slots=True)
class WeightsReady:
    """Global weights after ``round`` are published; train ``round + 1`` from them."""

    type: ClassVar[str] = "weights_ready"
    job_id: str
    round: int
    url: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Done:
    type: ClassVar[str] = "done"
    job_id: str
    model_url: str
    status: Literal["completed", "stopped", "failed"] = "completed"


@dataclass(frozen=True, slots=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    message: str


NodeFrame = Hello | Progress | OwnData | Evaluation | Left
ServerFrame = Welcome | Train | Evaluate | WeightsReady | Done | Error
Frame = NodeFrame | ServerFrame

F = TypeVar(
    "F",
    Hello,
    Progress,
    OwnData,
    Evaluation,
    Left,
    Welcome,
    Train,
    Evaluate,
    WeightsReady,
    Done,
    Error,
)

FRAME_TYPES: dict[str, type[Any]] = {
    cls.type: cls
    for cls in (
        Hello,
        Progress,
        OwnData,
        Evaluation,
        Left,
        Welcome,
        Train,
        Evaluate,
        WeightsReady,
        Done,
        Error,
    )
}


def encode(frame: Frame) -> str:
    return json.dumps({"type": frame.type, **_to_json(frame)}, separators=(",", ":"))


def decode(text: str | bytes) -> Frame:
    """Parse one frame, or raise ProtocolError saying exactly what is wrong."""
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame larger than {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from exc
    except RecursionError:  # small but deeply nested: json recurses once per level
        raise ProtocolError("frame is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("frame must be a JSON object")
    kind = data.pop("type", None)
    cls = FRAME_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown frame type {kind!r}")
    frame: Frame = _from_json(cls, data, kind)
    return frame


def decode_as(text: str | bytes, expected: type[F]) -> F:
    """Parse one frame that must be of type ``expected`` (the caller keeps its type)."""
    frame = decode(text)
    if not isinstance(frame, expected):
        raise ProtocolError(f"expected a {expected.type!r} frame, got {frame.type!r}")
    return frame


UPLOAD_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
MAX_COUNT = 2**31  # rounds and sample counts in an upload query


@dataclass(frozen=True, slots=True)
class UploadQuery:
    """What an upload says besides its weights: the query of ``POST /sync/weights``.

    ``job`` may be absent (the server's current job). ``metrics`` are the node's own readings
    for the round; a non-finite one is left out both ways, since no API answer may carry it.
    """

    job_id: str | None
    round: int
    samples: int
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def encode(self) -> str:
        """The query string (without the ``?``)."""
        fields: dict[str, str | int] = {"round": self.round, "samples": self.samples}
        if self.job_id is not None:
            fields = {"job": self.job_id, **fields}
        for key, value in self.metrics.items():
            if key in UPLOAD_METRICS and math.isfinite(value):
                fields[key] = f"{value:.6g}"
        return urlencode(fields)

    @classmethod
    def decode(cls, query: Mapping[str, str]) -> UploadQuery:
        """Parse a query, or raise ProtocolError naming the bad parameter. Unknown keys are
        ignored (older or newer nodes); whether the round and count fit the job is the job's
        to say."""
        job_id = query.get("job")
        if job_id is not None and not 0 < len(job_id) <= MAX_TEXT:
            raise ProtocolError(f"job must be 1..{MAX_TEXT} characters")
        metrics = {}
        for key in UPLOAD_METRICS:
            if key in query:
                try:
                    value = float(query[key])
                except ValueError:
                    raise ProtocolError(f"{key}={query[key]!r} is not a number") from None
                if math.isfinite(value):
                    metrics[key] = value
        return cls(job_id, _count(query, "round"), _count(query, "samples"), metrics)


def _count(query: Mapping[str, str], name: str) -> int:
    raw = query.get(name)
    if raw is None:
        raise ProtocolError(f"query parameter {name!r} is required")
    try:
        value = int(raw)
    except ValueError:
        raise ProtocolError(f"{name}={raw!r} is not an integer") from None
    if not 1 <= value <= MAX_COUNT:
        raise ProtocolError(f"{name} must be within 1..{MAX_COUNT}, got {value}")
    return value


def _to_json(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, ModelSpec):
            value = value.to_dict()  # JSON-native: lists, not tuples
        elif dataclasses.is_dataclass(value):
            value = _to_json(value)
        elif isinstance(value, tuple):
            value = [_to_json(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


Schema = tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]
_SCHEMAS: dict[type[Any], Schema] = {}


def _schema(cls: type[Any]) -> Schema:
    """A frame class's resolved field types and its fields, once per class: resolving the
    annotations costs more than the rest of a decode, and every progress frame would pay it."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    return schema


def _from_json(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    hints, fields = _schema(cls)
    unknown = set(data) - set(fields)
    if unknown:
        raise ProtocolError(f"{where}: unknown fields {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: missing field {name!r}")
            continue
        value = data[name]
        if name in getattr(cls, "readings", ()) and _is_non_finite(value):
            value = None
        kwargs[name] = _check(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a frame whose values are out of range
        raise ProtocolError(f"{where}: {exc}") from exc


def _is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def reading(value: float) -> float | None:
    """A measured number for a frame: None when it is NaN or Inf (JSON has no such value)."""
    return value if math.isfinite(value) else None


def _check(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check(option, value, where)
            except ProtocolError as exc:
                errors.append(str(exc))
        raise ProtocolError(errors[0])
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ProtocolError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is tuple:  # tuple[X, ...]: a JSON list of at most MAX_LIST items
        (item, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise ProtocolError(f"{where}: expected a list of at most {MAX_LIST} items")
        return tuple(_check(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is type(None):
        if value is not None:
            raise ProtocolError(f"{where}: expected null")
        return value
    if hint is ModelSpec:  # the spec checks itself, more strictly than a generic dataclass
        try:
            return ModelSpec.from_dict(value)
        except SpecError as exc:
            raise ProtocolError(f"{where}: {exc}") from exc
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        return _from_json(typing.cast(type[Any], hint), value, where)
    return _check_scalar(hint, value, where)


def _check_scalar(hint: Any, value: Any, where: str) -> Any:
    """A string, an integer or a finite number, each bounded."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected true or false")
        return value
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ProtocolError(f"{where}: expected a string of at most {MAX_TEXT} characters")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**53:
            raise ProtocolError(f"{where}: expected an integer")
        return value
    if hint is float:
        # An int too big for a float (10**400) is no finite number either.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or abs(value) > FLOAT_MAX
            or not math.isfinite(value)
        ):
            raise ProtocolError(f"{where}: expected a finite number")
        return float(value)
    raise ProtocolError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover
