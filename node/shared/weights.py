"""Weights on the wire and on disk: safetensors state dicts with the model spec in metadata.

Nothing here unpickles: safetensors holds raw little-endian tensors and a JSON header, and
every decoded file is checked against the model its spec describes before anyone uses it.

The format is simple enough that this module writes and parses it itself, to move a model
without copying it: the ``safetensors`` library copies every tensor on save and on load,
and writes its metadata in hash-map order (one content, many sha256s). The library reads
what we write and we read what it writes; ``tests/node/test_weights.py`` checks both ways.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from node.shared.errors import SpecError, WeightsError
from node.shared.model import ModelSpec, build_model

FORMAT = "fedavg.weights/1"
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = {torch.float32, torch.float16, torch.bfloat16}

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]
"""Tensor names -> (shape, dtype): what a model's state dict looks like."""


@dataclass(frozen=True, slots=True)
class WeightsMeta:
    """What a weights file says about itself (safetensors metadata is str -> str)."""

    spec: ModelSpec
    round: int = 0
    job_id: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {
            **self.extra,
            "format": FORMAT,
            "model_spec": self.spec.to_json(),
            "round": str(self.round),
            "job_id": self.job_id,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> WeightsMeta:
        if metadata.get("format") != FORMAT:
            raise WeightsError(f"not a fedavg weights file (format {metadata.get('format')!r})")
        try:
            spec = ModelSpec.from_json(metadata.get("model_spec", ""))
            round_ = int(metadata.get("round", "0"))
        except (SpecError, ValueError) as exc:
            raise WeightsError(f"bad weights metadata: {exc}") from exc
        own = {"format", "model_spec", "round", "job_id"}
        extra = {k: v for k, v in metadata.items() if k not in own}
        return cls(spec=spec, round=round_, job_id=metadata.get("job_id", ""), extra=extra)


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def on_the_wire(layout: Layout, wire_dtype: str) -> Layout:
    """``layout`` with its floating tensors in ``wire_dtype`` (see ``TrainConfig.wire_dtype``)."""
    dtype = WIRE_DTYPES[wire_dtype]
    return {k: (shape, dtype if d.is_floating_point else d) for k, (shape, d) in layout.items()}


def encode_weights(state: Mapping[str, torch.Tensor], meta: WeightsMeta) -> bytearray:
    """One weights file of ``state``, in its canonical spelling (see :func:`tensor_parts`)."""
    return encode_tensors(state, meta.to_metadata())


def weights_parts(state: Mapping[str, torch.Tensor], meta: WeightsMeta) -> list[memoryview]:
    """:func:`encode_weights` as the pieces it is made of, without copying a tensor."""
    return tensor_parts(state, meta.to_metadata())


def encode_tensors(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytearray:
    """One safetensors file, written into one preallocated buffer: each tensor's bytes are
    copied exactly once."""
    parts = tensor_parts(tensors, metadata)
    data = bytearray(sum(len(part) for part in parts))
    view, position = memoryview(data), 0
    for part in parts:
        view[position : position + len(part)] = part
        position += len(part)
    return data


def tensor_parts(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> list[memoryview]:
    """A safetensors file as its pieces: the header, then each tensor's raw bytes in file
    order, viewed in place. A sender can stream them without building the file.

    One spelling per content, so ETags and caches keyed by sha256 work: the header's keys
    (tensor names and metadata) are sorted and it is padded to 8 bytes, as the format
    wants; tensors follow by falling item size, then name, which keeps each one aligned.
    The safetensors library reads it back unchanged.
    """
    cpu = {k: _cpu_contiguous(v) for k, v in tensors.items()}
    header, offsets = _header({k: (tuple(v.shape), v.dtype) for k, v in cpu.items()}, metadata)
    return [memoryview(header), *(_raw_bytes(cpu[k]) for k in offsets)]


def weights_buffer(layout: Layout, meta: WeightsMeta) -> tuple[bytearray, dict[str, torch.Tensor]]:
    """An unfilled weights file for ``layout``: the header is written, and each tensor is a
    writable view into the data section, so a result computed into the views needs no
    encoding step at all (the server averages straight into the bytes it serves)."""
    header, offsets = _header(layout, meta.to_metadata())
    data = bytearray(len(header) + max((end for _, end in offsets.values()), default=0))
    data[: len(header)] = header
    views = {}
    for key, (begin, end) in offsets.items():
        shape, dtype = layout[key]
        count = (end - begin) // _itemsize(dtype)
        views[key] = (
            torch.frombuffer(data, dtype=dtype, count=count, offset=len(header) + begin).view(shape)
            if count
            else torch.empty(shape, dtype=dtype)
        )
    return data, views


def _header(
    layout: Layout, metadata: Mapping[str, str] | None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The canonical header (length prefix included) and each tensor's data offsets, in
    file order."""
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    offsets: dict[str, tuple[int, int]] = {}
    position = 0
    for key in sorted(layout, key=lambda k: (-_itemsize(layout[k][1]), k)):
        shape, dtype = layout[key]
        if dtype not in _DTYPE_NAMES:
            raise WeightsError(f"{key}: dtype {dtype} cannot be written")
        end = position + math.prod(shape) * _itemsize(dtype)
        offsets[key] = (position, end)
        header[key] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [position, end],
        }
        position = end
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


def _cpu_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, viewed, not copied (numpy has no bfloat16: go via uint8)."""
    if tensor.numel() == 0:
        return memoryview(b"")
    return tensor.reshape(-1).view(torch.uint8).numpy().data


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def layout_bytes(layout: Layout) -> int:
    """How many bytes the tensors of ``layout`` take, headers aside."""
    return sum(math.prod(shape) * _itemsize(dtype) for shape, dtype in layout.values())


def header_length(prefix: bytes | bytearray | memoryview) -> int:
    """The header length a safetensors file's first 8 bytes announce (little-endian), refused
    past ``MAX_HEADER_BYTES`` before anyone reads that much."""
    if len(prefix) < 8:
        raise WeightsError("truncated safetensors: no header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise WeightsError("safetensors header length is out of bounds")
    return int(length)


def parse_header(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors buffer and the offset its data section starts at.

    The one parser of the header: its size is checked before any JSON is read."""
    view = _bytes_view(data)
    length = header_length(view)
    if 8 + length > len(view):
        raise WeightsError("safetensors header length is out of bounds")
    try:
        header = json.loads(bytes(view[8 : 8 + length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"safetensors header is not JSON: {exc}") from exc
    except RecursionError:  # within the size bound but deeply nested
        raise WeightsError("safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise WeightsError("safetensors header must be an object")
    return header, 8 + length


def _bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")


def read_metadata(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer, with the header's size checked first."""
    header, _ = parse_header(data)
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise WeightsError("safetensors metadata must map strings to strings")
    return metadata


# safetensors dtype names -> torch dtypes we can read; anything else is refused.
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def decode_tensors(data: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors buffer as zero-copy views into it (a ``bytearray`` is not
    copied at all; ``bytes`` are copied once, since torch needs a writable buffer).

    The header is checked as strictly as the safetensors library does: known dtypes,
    shapes that match their byte ranges, ranges inside the buffer that tile the data
    section exactly, no overlaps. We parse it here only to avoid the library's copies.
    """
    view = _bytes_view(data if isinstance(data, bytearray | memoryview) else bytearray(data))
    try:
        header, start = parse_header(view)
    except WeightsError as exc:
        raise _invalid(str(exc)) from exc
    body_len = len(view) - start
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(name, entry)
        if not 0 <= begin <= end <= body_len:
            raise _invalid(f"{name}: byte range [{begin}, {end}) is outside the data")
        numel = math.prod(shape)
        if math.prod(d for d in shape if d) >= 2**62:  # an empty tensor's shape still has strides
            raise _invalid(f"{name}: shape {shape} is too large to describe a tensor")
        if (end - begin) != numel * _itemsize(dtype):
            raise _invalid(f"{name}: {end - begin} bytes do not hold shape {shape} of {dtype}")
        spans.append((begin, end, name))
        tensors[name] = _tensor_at(view, dtype, shape, start + begin)
    _check_tiling(spans, body_len)
    return tensors


def _tensor_at(view: memoryview, dtype: torch.dtype, shape: list[int], offset: int) -> torch.Tensor:
    numel = math.prod(shape)
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(view, dtype=dtype, count=numel, offset=offset)
    if offset % tensor.element_size():  # misaligned: a copy keeps kernels on the fast path
        tensor = tensor.clone()
    return tensor.view(shape)


def _check_tiling(spans: list[tuple[int, int, str]], body_len: int) -> None:
    """The tensors' byte ranges must cover the data section exactly once, in some order."""
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise _invalid(f"{name}: tensors overlap or leave gaps in the data section")
        covered = end
    if covered != body_len:
        raise _invalid("trailing bytes after the last tensor")


def _entry(name: str, entry: object) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(f"{name}: header entry needs exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise _invalid(f"{name}: dtype {entry['dtype']!r} is not supported")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or len(shape) > 16:
        raise _invalid(f"{name}: shape must be a list of at most 16 non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise _invalid(f"{name}: data_offsets must be two non-negative integers")
    return dtype, shape, offsets[0], offsets[1]


def _invalid(reason: str) -> WeightsError:
    return WeightsError(f"not a valid safetensors file: {reason}")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def decode_weights(data: bytes | bytearray) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Parse and fully validate a weights file against the spec it carries."""
    meta = WeightsMeta.from_metadata(read_metadata(data))
    tensors = decode_tensors(data)
    check_state(tensors, expected_layout(meta.spec))
    return tensors, meta


def expected_layout(spec: ModelSpec) -> Layout:
    """Names, shapes and dtypes of a spec's state dict (a copy: the caller may change it)."""
    return dict(_layout(spec))


@functools.lru_cache(maxsize=32)
def _layout(spec: ModelSpec) -> tuple[tuple[str, tuple[tuple[int, ...], torch.dtype]], ...]:
    """The layout, built once per spec on the meta device (no memory): every download's
    check needs it, and building even the meta model costs more than the check."""
    with torch.device("meta"):
        model = build_model(spec)
    return tuple((k, (tuple(v.shape), v.dtype)) for k, v in model.state_dict().items())


def check_state(tensors: Mapping[str, torch.Tensor], layout: Layout) -> None:
    """Refuse wrong keys, shapes, dtypes and non-finite values, naming the first problem."""
    missing = sorted(set(layout) - set(tensors))
    unexpected = sorted(set(tensors) - set(layout))
    if missing or unexpected:
        raise WeightsError(
            f"keys do not match the model: missing {missing}, unexpected {unexpected}"
        )
    for name, (shape, _) in layout.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise WeightsError(f"{name}: shape {tuple(tensor.shape)} != expected {shape}")
        if tensor.dtype not in ALLOWED_DTYPES:
            raise WeightsError(f"{name}: dtype {tensor.dtype} is not a float type we accept")
        if not all_finite(tensor):
            raise WeightsError(f"{name}: contains NaN or Inf")


def all_finite(tensor: torch.Tensor) -> bool:
    """One vectorised pass and no temporary: NaN spreads into min and max, and an Inf is one
    of them (``isfinite().all()`` writes a bool per value and costs 10x as much)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))
