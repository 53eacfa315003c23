"""The wire protocol: every frame round-trips, and every malformed frame is a ProtocolError."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.shared.errors import ProtocolError
from node.shared.model import ModelSpec
from node.shared.protocol import (
    FRAME_TYPES,
    MAX_FRAME_BYTES,
    MAX_SECRET,
    MAX_TEXT,
    MIN_SECRET,
    PROTOCOL_VERSION,
    Done,
    Error,
    Evaluate,
    Evaluation,
    Frame,
    Hello,
    Left,
    OwnData,
    OwnDataset,
    Progress,
    Train,
    TrainConfig,
    UploadQuery,
    WeightsReady,
    Welcome,
    decode,
    decode_as,
    encode,
    reading,
)

FUZZ = settings(max_examples=200, deadline=None)
FUZZ_JSON = settings(max_examples=100, deadline=None)  # structured inputs cost more to draw

EXAMPLES: list[Frame] = [
    Hello(
        node_id="n1",
        name="alpha",
        capacity=812.5,
        device="cpu",
        version="0.1.0",
        secret="s" * MIN_SECRET,
    ),
    Progress(job_id="mnist-1", round=3, batch=7, batches=20, loss=0.25),
    Left(reason="shutting down"),
    Left(),
    Welcome(node_id="n1", session_token="tok", server_version="0.1.0"),
    Train(
        job_id="mnist-1",
        dataset="mnist",
        shard_url="/shards/mnist-1/n1",
        shard_sha256="ab" * 32,
        model_spec=ModelSpec(hidden=(8,), dropout=()),
        config=TrainConfig(
            lr=0.01, batch_size=16, optimizer="sgd", local_epochs=2, seed=4, wire_dtype="bfloat16"
        ),
        rounds=5,
        round=1,
        weights_url="/sync/weights?job=mnist-1&round=0",
        weights_sha256="cd" * 32,
    ),
    Train(
        job_id="j",
        dataset="d",
        shard_url="/s",
        shard_sha256="",
        model_spec=ModelSpec(),
        config=TrainConfig(validation_split=0.2),
        rounds=1,
        round=1,
        weights_url="/w",
        weights_sha256="",
        data_mode="local",
    ),
    Evaluate(
        job_id="eval-1",
        dataset="digits",
        round=0,
        model_spec=ModelSpec(hidden=(8,), dropout=()),
        weights_url="/models/m.safetensors",
        weights_sha256="cd" * 32,
    ),
    Evaluation(job_id="j", round=0, samples=200, correct=150, loss=0.7),
    Evaluation(job_id="j", round=5, samples=1, correct=1, loss=None),
    WeightsReady(job_id="mnist-1", round=2, url="/sync/weights?job=mnist-1&round=2", sha256="e"),
    Done(job_id="mnist-1", model_url="/models/mnist-1.safetensors"),
    Done(job_id="mnist-1", model_url="", status="stopped"),
    Error(code="protocol", message="bad frame"),
    Progress(job_id="mnist-1", round=3, batch=7, batches=20, loss=0.25, epoch=2, epochs=5),
    OwnData(
        datasets=(
            OwnDataset(
                name="pets",
                input_shape=(3, 32, 32),
                class_names=("cat", "dog"),
                train_samples=80,
                test_samples=20,
                fingerprint="ab" * 32,
                label_counts=(50, 30),
            ),
            OwnDataset(
                name="digits",
                input_shape=(1, 28, 28),
                class_names=tuple("0123456789"),
                train_samples=4000,
                test_samples=1000,
                fingerprint="0" * 64,
            ),
        )
    ),
]


def _hello(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "hello",
        "node_id": "n1",
        "name": "alpha",
        "capacity": 100.0,
        "device": "cpu",
        "version": "0.1.0",
        "secret": "s" * 43,
    }
    data.update(changes)
    return data


def _progress(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "progress",
        "job_id": "j",
        "round": 1,
        "batch": 1,
        "batches": 2,
        "loss": 0.5,
    }
    data.update(changes)
    return data


def _train(**config: Any) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(encode(EXAMPLES[5]))
    frame["config"].update(config)
    return frame


def test_every_frame_type_has_an_example() -> None:
    assert {type(f) for f in EXAMPLES} == set(FRAME_TYPES.values())


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: f.type)
def test_round_trip(frame: Frame) -> None:
    text = encode(frame)
    assert decode(text) == frame
    assert decode(text.encode()) == frame
    assert json.loads(text)["type"] == frame.type


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"correct": 11}, "correct within 0..samples"),
        ({"correct": -1}, "correct within 0..samples"),
        ({"samples": 0}, "samples must be"),
        ({"round": -1}, "round must be"),
        ({"loss": -0.5}, "loss must be >= 0"),
    ],
)
def test_an_evaluation_out_of_range_is_refused(fields: dict[str, Any], fragment: str) -> None:
    frame = {"type": "evaluation", "job_id": "j", "round": 1, "samples": 10, "correct": 5}
    with pytest.raises(ProtocolError, match=fragment):
        decode(json.dumps({**frame, "loss": 0.1, **fields}))


def test_an_evaluations_non_finite_loss_reads_as_no_number() -> None:
    text = '{"type":"evaluation","job_id":"j","round":1,"samples":4,"correct":2,"loss":NaN}'
    assert decode(text) == Evaluation(job_id="j", round=1, samples=4, correct=2, loss=None)


def test_defaults_fill_missing_optional_fields() -> None:
    hello = decode(json.dumps(_hello()))
    assert isinstance(hello, Hello)
    assert hello.protocol == PROTOCOL_VERSION
    assert decode('{"type":"left"}') == Left(reason="")


def test_int_is_accepted_for_float_and_becomes_float() -> None:
    hello = decode(json.dumps(_hello(capacity=7)))
    assert isinstance(hello, Hello)
    assert hello.capacity == 7.0
    assert type(hello.capacity) is float


def test_nested_config_is_decoded_into_its_dataclass() -> None:
    train = decode(json.dumps(_train()))
    assert isinstance(train, Train)
    assert isinstance(train.config, TrainConfig)
    assert train.config.optimizer == "sgd"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"type":"nope"}', "unknown frame type"),
        ('{"type":7}', "unknown frame type"),
        ('{"node_id":"n"}', "unknown frame type"),
        ('{"type":null}', "unknown frame type"),
        ("not json", "not JSON"),
        ("", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        ('["hello"]', "JSON object"),
        ('"hello"', "JSON object"),
        ("42", "JSON object"),
        ("null", "JSON object"),
    ],
)
def test_refuses_malformed_frames(text: str | bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode(text)


def test_a_train_frame_carries_its_model_spec_as_an_object() -> None:
    spec = ModelSpec(input_shape=(3, 32, 32), hidden=(64, 32), dropout=(0.1,), num_classes=4)
    train = EXAMPLES[5]
    assert isinstance(train, Train)
    frame = dataclasses.replace(train, model_spec=spec)
    text = encode(frame)
    assert json.loads(text)["model_spec"] == spec.to_dict()
    decoded = decode(text)
    assert isinstance(decoded, Train) and decoded == frame
    assert isinstance(decoded.model_spec, ModelSpec) and decoded.model_spec == spec


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ([], "must be an object"),
        ("mlp", "must be an object"),
        (None, "must be an object"),
        ({"arch": "vit"}, "arch: unknown"),
        ({"layers": 3}, "unknown model spec fields"),
        ({"hidden": [0]}, "hidden layers"),
        ({"hidden": [True]}, "bad model spec"),
        ({"hidden": "8"}, "bad model spec"),
        ({"dropout": [0.5, 0.5, 0.5, 0.5]}, "dropout"),
        ({"num_classes": 1}, "num_classes"),
        ({"norm_std": 0}, "norm_std"),
        ({"norm_mean": 10**400}, "bad model spec"),  # float() overflows
    ],
)
def test_a_train_frame_with_a_malformed_model_spec_is_a_protocol_error(
    spec: Any, fragment: str
) -> None:
    with pytest.raises(ProtocolError, match=f"train.model_spec: .*{fragment}"):
        decode(json.dumps({**_train(), "model_spec": spec}))


def test_refuses_a_missing_field() -> None:
    data = _hello()
    del data["capacity"]
    with pytest.raises(ProtocolError, match=r"hello: missing field 'capacity'"):
        decode(json.dumps(data))


def test_refuses_an_unknown_field() -> None:
    with pytest.raises(ProtocolError, match=r"unknown fields \['extra'\]"):
        decode(json.dumps(_hello(extra=1)))
    with pytest.raises(ProtocolError, match=r"unknown fields \['momentum'\]"):
        decode(json.dumps(_train(momentum=0.9)))


@pytest.mark.parametrize(
    "data",
    [
        _progress(round=True),  # bool is not an int
        _progress(batch=1.5),
        _progress(batch="1"),
        _progress(round=2**60),  # beyond what a JS dashboard can hold exactly
        _progress(loss=True),
        _progress(loss="0.5"),
        _hello(capacity=[1.0]),
        _hello(node_id=7),  # int for str
        _hello(name=None),
        _hello(device=["cpu"]),
        _hello(version="x" * (MAX_TEXT + 1)),  # over-long string
        _hello(protocol="1"),
        _train(optimizer="adamw"),  # not one of the Literal's values
        _train(wire_dtype="int8"),
        _train(wire_dtype="float64"),
        _train(optimizer=["adam"]),
        _train(validation_split="0.1"),
        _train(batch_size=False),
        {**_train(), "config": "lr=1"},
        {**_train(), "model_spec": []},
        {"type": "done", "job_id": "j", "model_url": "", "status": "finished"},
    ],
)
def test_refuses_wrong_types(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(json.dumps(data))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None])
def test_a_non_finite_progress_loss_is_a_reading_not_an_error(value: float | None) -> None:
    # A diverged model's loss: the frame decodes, its loss is "no number" (JSON's null).
    frame = decode(json.dumps(_progress(loss=value)))
    assert isinstance(frame, Progress) and frame.loss is None
    assert json.loads(encode(frame))["loss"] is None  # and it goes out as valid JSON


def test_reading_keeps_finite_numbers_and_drops_the_rest() -> None:
    assert reading(0.25) == 0.25
    assert [reading(v) for v in (math.nan, math.inf, -math.inf)] == [None, None, None]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, -(10**400)])
@pytest.mark.parametrize("where", ["hello.capacity", "train.config.lr"])
def test_refuses_non_finite_numbers(value: float, where: str) -> None:
    frame = {"progress": _progress, "hello": _hello, "train": _train}[where.split(".")[0]]()
    target = frame["config"] if "config" in where else frame
    target[where.rsplit(".", 1)[1]] = value
    text = json.dumps(frame)  # Python writes NaN/Infinity, and its json reads them back
    assert "NaN" in text or "Infinity" in text or "0" * 400 in text  # or an int too big
    with pytest.raises(ProtocolError, match="finite"):
        decode(text)


def test_accepts_a_string_of_exactly_the_limit() -> None:
    hello = decode(json.dumps(_hello(name="x" * MAX_TEXT)))
    assert isinstance(hello, Hello)
    assert len(hello.name) == MAX_TEXT


def test_refuses_an_oversized_frame() -> None:
    text = json.dumps(_hello(name="x" * MAX_FRAME_BYTES))
    with pytest.raises(ProtocolError, match="larger than"):
        decode(text)
    with pytest.raises(ProtocolError, match="larger than"):
        decode(text.encode())


@pytest.mark.parametrize("depth", [2_000, 30_000])
def test_refuses_deeply_nested_json_within_the_size_limit(depth: int) -> None:
    text = '{"type":"hello","node_id":' + "[" * depth + "]" * depth + "}"
    assert len(text) < MAX_FRAME_BYTES
    with pytest.raises(ProtocolError):
        decode(text)


def test_decode_as_checks_the_type() -> None:
    text = encode(EXAMPLES[0])
    assert decode_as(text, Hello) == EXAMPLES[0]
    with pytest.raises(ProtocolError, match=r"expected a 'welcome' frame, got 'hello'"):
        decode_as(text, Welcome)
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_as("{", Hello)


# -- fuzz -------------------------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_field_values: st.SearchStrategy[Any] = (
    _json_scalars | st.lists(_json_scalars, max_size=3) | st.just({})
)
_field_names = st.sampled_from(
    sorted(
        {"node_id", "name", "capacity", "device", "version", "protocol", "job_id", "round"}
        | {"batch", "batches", "loss", "reason", "session_token", "server_version", "dataset"}
        | {"shard_url", "shard_sha256", "model_spec", "config", "rounds", "weights_url"}
        | {"weights_sha256", "url", "sha256", "model_url", "status", "code", "message", "lr"}
    )
)


def _decode_or_protocol_error(text: str | bytes) -> None:
    try:
        frame = decode(text)
    except ProtocolError:
        return
    assert type(frame) in FRAME_TYPES.values()
    assert decode(encode(frame)) == frame  # whatever decodes, re-encodes to the same frame


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text(text: str | bytes) -> None:
    _decode_or_protocol_error(text)


@FUZZ_JSON
@given(_json)
def test_fuzz_arbitrary_json(value: Any) -> None:
    _decode_or_protocol_error(json.dumps(value))


@FUZZ_JSON
@given(
    st.sampled_from(sorted(FRAME_TYPES)),
    st.dictionaries(_field_names, _field_values, max_size=8),
)
def test_fuzz_known_type_with_random_fields(kind: str, fields: dict[str, Any]) -> None:
    _decode_or_protocol_error(json.dumps({"type": kind, **fields}))


@FUZZ_JSON
@given(st.sampled_from(EXAMPLES), st.data())
def test_fuzz_one_field_of_a_valid_frame_replaced(frame: Frame, data: st.DataObject) -> None:
    obj = json.loads(encode(frame))
    fields = [k for k in obj if k != "type"]
    if not fields:
        return
    obj[data.draw(st.sampled_from(fields))] = data.draw(_json)
    _decode_or_protocol_error(json.dumps(obj))


@pytest.mark.parametrize("secret", ["s" * MIN_SECRET, "s" * MAX_SECRET])
def test_a_hello_secret_at_either_bound_is_accepted(secret: str) -> None:
    hello = decode(json.dumps(_hello(secret=secret)))
    assert isinstance(hello, Hello) and hello.secret == secret


@pytest.mark.parametrize("secret", ["", "s" * (MIN_SECRET - 1), "s" * (MAX_SECRET + 1), 43])
def test_a_hello_secret_out_of_bounds_is_refused(secret: object) -> None:
    with pytest.raises(ProtocolError, match="secret"):
        decode(json.dumps(_hello(secret=secret)))


def test_a_hello_without_a_secret_is_refused() -> None:
    data = _hello()
    del data["secret"]
    with pytest.raises(ProtocolError, match="missing field 'secret'"):
        decode(json.dumps(data))


def test_a_hello_never_shows_its_secret() -> None:
    hello = decode(json.dumps(_hello(secret="do-not-log-this-secret")))
    assert "do-not-log-this-secret" not in repr(hello)


# -- the upload query ---------------------------------------------------------------------------


def test_upload_query_round_trips_and_drops_non_finite_metrics() -> None:
    query = UploadQuery(
        "job-1", 3, 120, {"train_loss": 0.25, "val_accuracy": float("nan"), "seconds": 1.5}
    )
    decoded = UploadQuery.decode(dict(parse_qsl(query.encode())))
    assert decoded == UploadQuery("job-1", 3, 120, {"train_loss": 0.25, "seconds": 1.5})
    assert "job" not in UploadQuery(None, 1, 1).encode()
    assert UploadQuery.decode({"round": "1", "samples": "2"}).job_id is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"samples": "2"}, "'round' is required"),
        ({"round": "x", "samples": "2"}, "round='x' is not an integer"),
        ({"round": "0", "samples": "2"}, "round must be within"),
        ({"round": "1", "samples": str(2**31 + 1)}, "samples must be within"),
        ({"round": "1", "samples": "2", "train_loss": "abc"}, "train_loss='abc' is not a number"),
        ({"round": "1", "samples": "2", "job": ""}, "job must be"),
    ],
)
def test_upload_query_refuses_bad_parameters(query: dict[str, str], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        UploadQuery.decode(query)


def test_a_train_frame_carries_fedprox_mu_and_an_older_one_without_it_is_plain_fedavg() -> None:
    example = EXAMPLES[5]
    assert isinstance(example, Train)
    frame = dataclasses.replace(example, config=TrainConfig(proximal_mu=0.01))
    text = encode(frame)
    assert json.loads(text)["config"]["proximal_mu"] == 0.01
    assert decode(text) == frame
    older = _train()
    del older["config"]["proximal_mu"]  # a server from before FedProx
    train = decode(json.dumps(older))
    assert isinstance(train, Train) and train.config.proximal_mu == 0.0
    as_int = decode(json.dumps(_train(proximal_mu=1)))
    assert isinstance(as_int, Train) and type(as_int.config.proximal_mu) is float


@pytest.mark.parametrize(
    ("mu", "fragment"),
    [
        (-0.1, "proximal_mu must be a finite number within"),
        (1e5, "proximal_mu must be a finite number within"),
        (math.inf, "expected a finite number"),
        ("0.1", "expected a finite number"),
        (True, "expected a finite number"),
    ],
)
def test_a_bad_fedprox_mu_is_a_protocol_error(mu: object, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode(json.dumps(_train(proximal_mu=mu)))
    if isinstance(mu, float) and math.isfinite(mu):
        with pytest.raises(ValueError, match="proximal_mu"):
            TrainConfig(proximal_mu=mu)


def test_a_progress_frame_without_epochs_reads_as_the_one_epoch() -> None:
    # What a node from before epochs were reported sends.
    old = {"type": "progress", "job_id": "j", "round": 2, "batch": 3, "batches": 9, "loss": 0.5}
    frame = decode(json.dumps(old))
    assert isinstance(frame, Progress) and (frame.epoch, frame.epochs) == (1, 1)
    assert json.loads(encode(frame)) == {**old, "epoch": 1, "epochs": 1}


@pytest.mark.parametrize("epoch, epochs", [(0, 1), (3, 2), (1, 0), (1, 1001), (-1, 5)])
def test_a_progress_epoch_outside_its_epochs_is_refused(epoch: int, epochs: int) -> None:
    data = {**_progress(loss=0.5), "epoch": epoch, "epochs": epochs}
    with pytest.raises(ProtocolError, match="epoch"):
        decode(json.dumps(data))


def _own(**changes: Any) -> dict[str, Any]:
    """An own_data frame as JSON, its first dataset changed."""
    frame: dict[str, Any] = json.loads(encode(EXAMPLES[-1]))
    frame["datasets"][0].update(changes)
    return frame


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"name": "Pets"}, "name must match"),
        ({"input_shape": [3, 32]}, r"input_shape must be \[C, H, W\]"),
        ({"input_shape": [5, 32, 32]}, "with C of 1..4"),
        ({"input_shape": [3, 0, 32]}, "each side must be 1..4096"),
        ({"class_names": ["cat"], "label_counts": None}, "class_names: 2..1000 classes"),
        ({"train_samples": 0}, "train_samples and test_samples must be 1.."),
        ({"fingerprint": "xyz"}, "fingerprint must be 64 lower-case hex digits"),
        ({"label_counts": [50, 31]}, "label_counts: one count >= 0 per class, summing"),
        ({"label_counts": [80]}, "label_counts"),
        ({"dtype": "float32"}, "is not one of"),
        ({"input_shape": list(range(1001))}, "expected a list of at most 1000 items"),
        ({"class_names": "cat,dog"}, "expected a list"),
        ({"samples": [[1, 2, 3]]}, "unknown fields"),  # no room for a sample, by name either
    ],
)
def test_a_bad_own_dataset_is_refused_naming_what(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode(json.dumps(_own(**changes)))


def test_own_data_holds_1_to_32_datasets_each_named_once() -> None:
    frame = _own()
    with pytest.raises(ProtocolError, match="each name once"):
        decode(json.dumps({**frame, "datasets": [frame["datasets"][0]] * 2}))
    with pytest.raises(ProtocolError, match=r"1\.\.32 of them"):
        decode(json.dumps({**frame, "datasets": []}))
