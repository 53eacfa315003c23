"""Weights and labelled-set files: round trips, one spelling per content, and every refusal."""

from __future__ import annotations

import contextlib
import json
import math
import struct
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec, init_state
from node.shared.shards import ShardError, decode_xy, encode_xy
from node.shared.weights import (
    FORMAT,
    MAX_HEADER_BYTES,
    WeightsMeta,
    decode_tensors,
    decode_weights,
    encode_weights,
    expected_layout,
    header_length,
    on_the_wire,
    parse_header,
    read_metadata,
    sha256_hex,
    weights_buffer,
    weights_parts,
)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    return init_state(SPEC, seed)


def _meta(**changes: Any) -> WeightsMeta:
    values: dict[str, Any] = {"spec": SPEC, "round": 2, "job_id": "job-1"}
    values.update(changes)
    return WeightsMeta(**values)


def _file() -> bytes:
    return bytes(encode_weights(_state(), _meta()))


def _raw(header: Any, payload: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors-shaped buffer with whatever header (and claimed length) a test wants."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + payload


def _with_metadata(**changes: str | None) -> bytes:
    metadata = _meta().to_metadata()
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return st_save(_state(), metadata=metadata)


def _header_len(data: bytes) -> int:
    return int(struct.unpack("<Q", data[:8])[0])


# -- weights: round trip and canonical bytes ----------------------------------------------------


def test_round_trip_keeps_tensors_and_metadata() -> None:
    state = _state()
    meta = _meta(extra={"kind": "final", "test_accuracy": "0.91"})
    tensors, decoded = decode_weights(encode_weights(state, meta))
    assert decoded == meta
    assert decoded.spec == SPEC
    assert dict(decoded.extra) == {"kind": "final", "test_accuracy": "0.91"}
    assert tensors.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(tensors[key], value)


def test_metadata_has_the_format_marker_and_the_spec() -> None:
    metadata = read_metadata(_file())
    assert metadata["format"] == FORMAT
    assert ModelSpec.from_json(metadata["model_spec"]) == SPEC
    assert metadata["round"] == "2"
    assert metadata["job_id"] == "job-1"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_accepted(dtype: torch.dtype) -> None:
    state = {k: v.to(dtype) for k, v in _state().items()}
    tensors, _ = decode_weights(encode_weights(state, _meta()))
    assert all(t.dtype == dtype for t in tensors.values())


def test_non_contiguous_tensors_are_encoded() -> None:
    state = _state()
    key = next(k for k, v in state.items() if v.dim() == 2)
    weight = state[key]
    state[key] = weight.t().contiguous().t()  # same values, transposed strides
    assert not state[key].is_contiguous()
    tensors, _ = decode_weights(encode_weights(state, _meta()))
    assert torch.equal(tensors[key], weight)


def test_identical_content_gives_identical_bytes_and_sha() -> None:
    extra = {f"key{i}": str(i) for i in range(20)}  # many keys: hash-map order would vary
    files = [encode_weights(_state(), _meta(extra=extra)) for _ in range(5)]
    assert len({bytes(f) for f in files}) == 1
    assert len({sha256_hex(f) for f in files}) == 1
    assert encode_weights(_state(1), _meta(extra=extra)) != files[0]


def test_encoding_is_canonical_padded_and_loadable_by_safetensors() -> None:
    data = bytes(encode_weights(_state(), _meta(extra={"b": "2", "a": "1"})))
    assert _header_len(data) % 8 == 0
    header = json.loads(data[8 : 8 + _header_len(data)])
    assert list(header) == sorted(header)
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    loaded = st_load(data)
    for key, value in _state().items():
        assert torch.equal(loaded[key], value)
    # The same content written by the safetensors library decodes to the same tensors.
    library = st_save(_state(), metadata=_meta().to_metadata())
    assert all(torch.equal(decode_tensors(library)[k], v) for k, v in _state().items())


def test_encoding_ignores_insertion_order() -> None:
    state = _state()
    forward = encode_weights(state, _meta(extra={"a": "1", "b": "2", "c": "3"}))
    backward = encode_weights(
        dict(reversed(state.items())), _meta(extra={"c": "3", "b": "2", "a": "1"})
    )
    assert forward == backward


def test_parts_and_buffer_spell_the_same_file() -> None:
    state, meta = _state(), _meta()
    parts = weights_parts(state, meta)
    assert b"".join(parts) == encode_weights(state, meta)
    assert parts[1].obj is not None  # tensor parts view the tensors' own memory: no copy
    data, views = weights_buffer(expected_layout(SPEC), meta)
    for key, view in views.items():
        view.copy_(state[key])
    assert data == encode_weights(state, meta)


def test_expected_layout_matches_an_initial_state() -> None:
    layout = expected_layout(SPEC)
    state = _state()
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == layout


def test_expected_layout_is_a_fresh_dict_each_time() -> None:
    """The layout is built once per spec; a caller changing its copy changes no other's."""
    layout = expected_layout(SPEC)
    layout["steps"] = ((), torch.int64)
    del layout[next(iter(expected_layout(SPEC)))]
    assert "steps" not in expected_layout(SPEC)
    assert expected_layout(SPEC) == {k: (tuple(v.shape), v.dtype) for k, v in _state().items()}


# -- weights: refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 3, 7, 8, 20, -1, -4])
def test_refuses_a_truncated_file(cut: int) -> None:
    data = _file()
    with pytest.raises(WeightsError):
        decode_weights(data[:cut])


def test_refuses_a_truncated_payload() -> None:
    data = _file()
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        decode_weights(data[: _header_len(data) + 8 + 4])


def test_refuses_a_header_length_past_the_end() -> None:
    data = _file()
    lying = struct.pack("<Q", len(data)) + data[8:]
    with pytest.raises(WeightsError, match="out of bounds"):
        decode_weights(lying)


def test_refuses_a_huge_header_length() -> None:
    data = struct.pack("<Q", MAX_HEADER_BYTES + 8) + b"{" + b" " * (MAX_HEADER_BYTES + 8)
    with pytest.raises(WeightsError, match="out of bounds"):
        decode_weights(data)
    with pytest.raises(WeightsError, match="out of bounds"):
        decode_weights(struct.pack("<Q", 2**64 - 1) + b"{}")


def test_refuses_a_header_length_that_is_too_short() -> None:
    data = _file()
    lying = struct.pack("<Q", _header_len(data) - 8) + data[8:]
    with pytest.raises(WeightsError):
        decode_weights(lying)


@pytest.mark.parametrize(
    "header",
    [b"not json", b"\xff\xfe{}", b'{"a": ', b"[" * 5000 + b"]" * 5000],
    ids=["text", "bad-utf8", "unterminated", "deeply-nested"],
)
def test_refuses_a_header_that_is_not_json(header: bytes) -> None:
    with pytest.raises(WeightsError):
        decode_weights(_raw(header))


@pytest.mark.parametrize(
    "header",
    [
        [],
        "text",
        {"__metadata__": None},
        {"__metadata__": []},
        {"__metadata__": {"format": 1}},
        {"__metadata__": {"format": FORMAT, "round": 2}},
    ],
)
def test_refuses_metadata_that_is_not_a_string_map(header: Any) -> None:
    with pytest.raises(WeightsError):
        decode_weights(_raw(header))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"format": None}, "not a fedavg weights file"),
        ({"format": "fedavg.weights/2"}, "not a fedavg weights file"),
        ({"format": ""}, "not a fedavg weights file"),
        ({"model_spec": None}, "bad weights metadata"),
        ({"model_spec": "not json"}, "bad weights metadata"),
        ({"model_spec": "[]"}, "bad weights metadata"),
        ({"model_spec": '{"arch": "vit"}'}, "bad weights metadata"),
        ({"model_spec": '{"hidden": [0]}'}, "bad weights metadata"),
        ({"model_spec": '{"hidden": [true]}'}, "bad weights metadata"),
        ({"model_spec": '{"layers": 3}'}, "bad weights metadata"),
        ({"model_spec": "[" * 5000 + "]" * 5000}, "bad weights metadata"),
        ({"round": "two"}, "bad weights metadata"),
    ],
)
def test_refuses_bad_metadata(changes: dict[str, str | None], fragment: str) -> None:
    with pytest.raises(WeightsError, match=fragment):
        decode_weights(_with_metadata(**changes))


def test_refuses_weights_for_another_model() -> None:
    other = ModelSpec(input_shape=(1, 4, 4), hidden=(6,), dropout=(), num_classes=3)
    data = encode_weights(init_state(other, 0), _meta())  # metadata says SPEC
    with pytest.raises(WeightsError, match="shape"):
        decode_weights(data)


def test_refuses_missing_and_unexpected_keys() -> None:
    state = _state()
    first = next(iter(state))
    missing = {k: v for k, v in state.items() if k != first}
    with pytest.raises(WeightsError, match=rf"missing \['{first}'\]"):
        decode_weights(encode_weights(missing, _meta()))
    extra = {**state, "9.weight": torch.zeros(2)}
    with pytest.raises(WeightsError, match=r"unexpected \['9.weight'\]"):
        decode_weights(encode_weights(extra, _meta()))


def test_refuses_a_wrong_shape() -> None:
    state = _state()
    key = next(iter(state))
    state[key] = state[key].flatten()
    with pytest.raises(WeightsError, match=f"{key}: shape"):
        decode_weights(encode_weights(state, _meta()))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float64])
def test_refuses_a_non_accepted_dtype(dtype: torch.dtype) -> None:
    state = _state()
    key = next(iter(state))
    state[key] = state[key].to(dtype)
    with pytest.raises(WeightsError, match="dtype"):
        decode_weights(encode_weights(state, _meta()))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_refuses_non_finite_values(value: float) -> None:
    state = _state()
    key = list(state)[-1]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    with pytest.raises(WeightsError, match="NaN or Inf"):
        decode_weights(encode_weights(state, _meta()))


@pytest.mark.parametrize("dtype", ["F4", "F8_E8M0"])
def test_refuses_dtypes_torch_cannot_map(dtype: str) -> None:
    # The Rust parser knows these, safetensors.torch has no torch dtype for them.
    header = {"w": {"dtype": dtype, "shape": [16 if dtype == "F4" else 8], "data_offsets": [0, 8]}}
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        decode_tensors(_raw(header, bytes(8)))


def test_read_metadata_of_a_file_without_metadata_is_empty() -> None:
    assert read_metadata(st_save({"w": torch.zeros(2)})) == {}


def test_parse_header_returns_the_header_and_where_the_data_starts() -> None:
    data = _file()
    header, start = parse_header(data)
    assert start == 8 + _header_len(data)
    assert header["__metadata__"] == _meta().to_metadata()
    assert parse_header(memoryview(bytearray(data))) == (header, start)
    assert header_length(data[:8]) == _header_len(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated safetensors: no header length"),
        (b"\x01" * 7, "truncated safetensors: no header length"),
        (_raw({}, length=MAX_HEADER_BYTES + 1), "header length is out of bounds"),
        (_raw({}, length=64), "header length is out of bounds"),
        (_raw(b"{not json"), "header is not JSON"),
        (_raw(b"\xff\xfe"), "header is not JSON"),
        (_raw(b"[" * 5000 + b"]" * 5000), "nested too deeply"),
        (_raw([1, 2]), "header must be an object"),
    ],
)
def test_the_one_header_parser_refuses_clearly(data: bytes, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        parse_header(data)
    with pytest.raises(WeightsError, match=message):
        read_metadata(data)
    with pytest.raises(WeightsError, match=f"not a valid safetensors file: .*{message}"):
        decode_tensors(data)


def test_header_length_refuses_a_huge_length_before_reading_it() -> None:
    assert header_length(struct.pack("<Q", MAX_HEADER_BYTES)) == MAX_HEADER_BYTES
    with pytest.raises(WeightsError, match="out of bounds"):
        header_length(struct.pack("<Q", 2**64 - 1))


# -- labelled sets ------------------------------------------------------------------------------


def _xy(n: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=gen)
    return x, torch.arange(n, dtype=torch.int64) % classes


def test_xy_round_trip() -> None:
    x, y = _xy()
    data = encode_xy(x, y, {"node_id": "n1"})
    x2, y2 = decode_xy(data, input_shape=(1, 4, 4), num_classes=3)
    assert torch.equal(x, x2)
    assert torch.equal(y, y2)
    assert read_metadata(data) == {"node_id": "n1"}
    assert encode_xy(x, y, {"node_id": "n1"}) == data


def test_xy_input_shape_compares_element_counts() -> None:
    x, y = _xy()
    decode_xy(encode_xy(x.reshape(6, 16, 1), y), input_shape=(1, 4, 4))


def test_xy_empty_set_decodes() -> None:
    x = torch.zeros((0, 1, 4, 4), dtype=torch.uint8)
    y = torch.zeros((0,), dtype=torch.int64)
    x2, y2 = decode_xy(encode_xy(x, y), input_shape=(1, 4, 4), num_classes=3)
    assert x2.shape == (0, 1, 4, 4)
    assert y2.shape == (0,)
    with pytest.raises(ShardError, match="model expects"):
        decode_xy(encode_xy(x, y), input_shape=(1, 5, 5))


@pytest.mark.parametrize(
    "tensors",
    [
        {"x": torch.zeros(2, 4, 4), "y": torch.zeros(2, dtype=torch.int64)},
        {"x": torch.zeros(2, 4, 4, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int32)},
        {"x": torch.zeros(2, 4, 4, dtype=torch.int8), "y": torch.zeros(2, dtype=torch.int64)},
    ],
)
def test_xy_refuses_wrong_dtypes(tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ShardError, match="dtypes"):
        decode_xy(st_save(tensors))


@pytest.mark.parametrize(
    "tensors",
    [
        {"x": torch.zeros(3, 4, 4, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int64)},
        {"x": torch.zeros(2, 4, 4, dtype=torch.uint8), "y": torch.zeros(2, 1, dtype=torch.int64)},
        {"x": torch.zeros(2, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int64)},
    ],
)
def test_xy_refuses_shapes_that_do_not_fit(tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ShardError, match="shapes"):
        decode_xy(st_save(tensors))


@pytest.mark.parametrize(
    "tensors",
    [
        {"x": torch.zeros(2, 4, 4, dtype=torch.uint8)},
        {"y": torch.zeros(2, dtype=torch.int64)},
        {
            "x": torch.zeros(2, 4, 4, dtype=torch.uint8),
            "y": torch.zeros(2, dtype=torch.int64),
            "z": torch.zeros(1),
        },
    ],
)
def test_xy_refuses_other_tensor_names(tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ShardError, match="expected tensors 'x' and 'y'"):
        decode_xy(st_save(tensors))


def test_xy_refuses_the_wrong_input_shape() -> None:
    x, y = _xy()
    with pytest.raises(ShardError, match="model expects"):
        decode_xy(encode_xy(x, y), input_shape=(1, 28, 28))


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_xy_refuses_labels_out_of_range(bad: int) -> None:
    x, y = _xy()
    y[2] = bad
    data = encode_xy(x, y)
    decode_xy(data)  # without num_classes there is nothing to compare with
    with pytest.raises(ShardError, match=r"labels must lie in \[0, 3\)"):
        decode_xy(data, num_classes=3)


def test_xy_refuses_non_safetensors_as_shard_error() -> None:
    assert issubclass(ShardError, WeightsError)
    with pytest.raises(ShardError):
        decode_xy(b"\x00" * 32)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (torch.zeros(2, 4, dtype=torch.float32), torch.zeros(2, dtype=torch.int64)),
        (torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32)),
        (torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)),
    ],
)
def test_encode_xy_refuses_what_decode_would(x: torch.Tensor, y: torch.Tensor) -> None:
    with pytest.raises(ShardError):
        encode_xy(x, y)


# -- fuzz ---------------------------------------------------------------------------------------

_VALID = _file()
_header_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
_tensor_headers = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F4", "F8_E8M0", "X"]),
        "shape": st.lists(st.integers(-1, 40), max_size=3),
        "data_offsets": st.lists(st.integers(-1, 200), min_size=0, max_size=3),
    }
)


def _weights_or_error(data: bytes) -> None:
    try:
        tensors, meta = decode_weights(data)
    except WeightsError:
        return
    assert tensors.keys() == expected_layout(meta.spec).keys()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _weights_or_error(data)
    with contextlib.suppress(WeightsError):
        decode_xy(data, input_shape=(1, 4, 4), num_classes=3)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=8), _tensor_headers | _header_values, max_size=4),
    st.dictionaries(
        st.sampled_from(["format", "model_spec", "round", "job_id", "x"]),
        st.sampled_from([FORMAT, SPEC.to_json(), "1", "{}", "x"]),
        max_size=5,
    ),
    st.binary(max_size=300),
)
def test_fuzz_plausible_headers(
    tensors: dict[str, Any], metadata: dict[str, str], payload: bytes
) -> None:
    header = {**tensors, "__metadata__": metadata}
    data = _raw(header, payload)
    _weights_or_error(data)
    with contextlib.suppress(WeightsError):
        decode_xy(data, input_shape=(1, 4, 4), num_classes=3)


@FUZZ
@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255), st.integers(0, len(_VALID)))
def test_fuzz_corrupted_valid_file(position: int, flip: int, cut: int) -> None:
    data = bytearray(_VALID)
    data[position] ^= flip
    _weights_or_error(bytes(data))
    _weights_or_error(bytes(data[:cut]))


def test_on_the_wire_changes_only_the_float_dtypes() -> None:
    layout = {**expected_layout(SPEC), "steps": ((), torch.int64)}
    wire = on_the_wire(layout, "bfloat16")
    assert {k: shape for k, (shape, _) in wire.items()} == {k: s for k, (s, _) in layout.items()}
    assert wire["steps"][1] == torch.int64
    assert {d for k, (_, d) in wire.items() if k != "steps"} == {torch.bfloat16}
    assert on_the_wire(layout, "float32") == layout
