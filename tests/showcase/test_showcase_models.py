"""Model files: validated before use, never unpickled, cached by content, described well."""

from __future__ import annotations

import io
import pickle
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save
from showcase_support import TrainedModel, model_bytes

from node.shared.model import ModelSpec, init_state
from node.shared.weights import WeightsMeta, encode_weights
from showcase.errors import CannotServeError, InvalidModelError
from showcase.models import (
    ModelCache,
    ModelInfo,
    count_contributors,
    load_model_bytes,
    meta_from_api,
    newest_first,
    parse_created,
)


def test_a_trained_model_loads_and_predicts_a_probability_for_each_digit(
    trained: TrainedModel,
) -> None:
    model = load_model_bytes(trained.data)

    prediction = model.predict(np.zeros((28, 28), np.uint8))

    assert len(prediction.probabilities) == 10
    assert sum(prediction.probabilities) == pytest.approx(1.0)
    assert prediction.confidence == max(prediction.probabilities)
    assert prediction.digit == int(np.argmax(prediction.probabilities))
    assert model.meta.extra["kind"] == "final"


def test_architecture_comes_from_the_files_metadata() -> None:
    spec = ModelSpec(hidden=(32, 16), dropout=(), norm_mean=0.2, norm_std=0.4)

    model = load_model_bytes(model_bytes(init_state(spec, seed=3), spec))

    assert model.spec == spec
    assert model.predict(np.zeros((28, 28), np.uint8)).probabilities


def test_half_precision_weights_are_accepted() -> None:
    state = {k: v.half() for k, v in init_state(ModelSpec(), seed=2).items()}

    assert load_model_bytes(model_bytes(state)).predict(np.zeros((28, 28), np.uint8))


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def torch_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save(init_state(ModelSpec(), seed=1), buffer)
    return buffer.getvalue()


def no_fedavg_metadata() -> bytes:
    return st_save(init_state(ModelSpec(), seed=1))


def wrong_shape() -> bytes:
    state = init_state(ModelSpec(), seed=1)
    state["1.weight"] = torch.zeros(10, 10)
    return bytes(encode_weights(state, WeightsMeta(ModelSpec())))


def non_finite() -> bytes:
    state = init_state(ModelSpec(), seed=1)
    state["1.bias"][0] = float("nan")
    return bytes(encode_weights(state, WeightsMeta(ModelSpec())))


def five_channels() -> bytes:
    spec = ModelSpec(arch="cnn", input_shape=(5, 32, 32), channels=(4,), hidden=(8,))
    return bytes(encode_weights(init_state(spec, seed=1), WeightsMeta(spec)))


def flat_vectors() -> bytes:
    spec = ModelSpec(input_shape=(3072,), hidden=(8,), dropout=())
    return bytes(encode_weights(init_state(spec, seed=1), WeightsMeta(spec)))


def unknown_arch() -> bytes:
    metadata = WeightsMeta(ModelSpec()).to_metadata()
    metadata["model_spec"] = '{"arch": "vit", "input_shape": [3, 32, 32]}'
    return st_save(init_state(ModelSpec(), seed=1), metadata)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: b"", "truncated", id="empty"),
        pytest.param(lambda: b"\x00" * 100, "not a", id="zeros"),
        pytest.param(lambda: pickle.dumps(Boom()), "not a", id="pickle"),
        pytest.param(torch_checkpoint, "not a", id="torch-save"),
        pytest.param(no_fedavg_metadata, "not a fedavg", id="plain-safetensors"),
        pytest.param(wrong_shape, "shape", id="wrong-shape"),
        pytest.param(non_finite, "NaN", id="nan"),
        pytest.param(five_channels, "5 channels", id="five-channels"),
        pytest.param(flat_vectors, "not an image", id="flat-input"),
        pytest.param(unknown_arch, "unknown 'vit'", id="unknown-arch"),
    ],
)
def test_files_that_are_not_usable_models_are_refused_clearly(
    make: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(make)
    with pytest.raises(InvalidModelError, match=message):
        load_model_bytes(make())
    assert "unpickled" not in capsys.readouterr().out


def test_oversized_files_are_refused_before_decoding(trained: TrainedModel) -> None:
    with pytest.raises(InvalidModelError, match="at most"):
        load_model_bytes(trained.data, max_bytes=len(trained.data) - 1)


def test_cache_decodes_each_distinct_file_once(trained: TrainedModel) -> None:
    cache = ModelCache(entries=2)

    first = cache.load(trained.data)
    again = cache.load(bytes(trained.data))

    assert again is first
    assert cache.get(first.sha256) is first
    assert len(cache) == 1


def test_cache_drops_the_least_recently_used() -> None:
    cache = ModelCache(entries=2)
    a, b, c = (model_bytes(init_state(ModelSpec(), seed=s)) for s in (1, 2, 3))
    ma = cache.load(a)
    mb = cache.load(b)
    cache.get(ma.sha256)  # a is now more recent than b

    cache.load(c)

    assert cache.get(ma.sha256) is ma
    assert cache.get(mb.sha256) is None
    assert len(cache) == 2


def test_cache_refuses_files_over_its_limit() -> None:
    with pytest.raises(InvalidModelError, match="at most"):
        ModelCache(max_bytes=100).load(model_bytes())


def info(**extra: object) -> ModelInfo:
    meta = WeightsMeta(ModelSpec(), extra={k: str(v) for k, v in extra.items()})
    return ModelInfo(
        key="m.safetensors",
        name="m.safetensors",
        origin="folder",
        meta=meta,
        size=2048,
        created=parse_created(str(extra.get("created", ""))),
    )


def test_label_and_details_show_dataset_rounds_nodes_accuracy_and_date() -> None:
    m = info(
        dataset="mnist",
        rounds=5,
        contributors='[["a", "b"], ["a", "c"], ["b"]]',
        test_accuracy=0.9123,
        created="2025-06-01T12:30:00+00:00",
    )

    assert (
        m.label()
        == "2025-06-01 12:30 · acc 91.2% · mnist · mlp · 1\u00d728\u00d728 · 5 rounds · 3 nodes"
    )
    details = m.details()
    assert "kind" not in details  # the file does not say whether it is the final or the best
    assert details["dataset"] == "mnist"
    assert details["rounds"] == "5"
    assert details["nodes"] == "3"
    assert details["test accuracy"] == "91.23%"
    assert details["created"] == "2025-06-01 12:30:00 UTC"
    assert details["size"] == "2 KiB"
    assert details["model"] == "mlp [256, 128, 64]"
    assert details["input"] == "1\u00d728\u00d728"
    assert details["classes"] == "10 (no names in the file)"
    named = info(
        class_names='["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", '
        '"horse", "ship", "truck"]'
    )
    assert named.details()["classes"] == "10 (airplane, automobile, bird, cat, …)"


def test_the_kind_says_final_or_best_with_its_round() -> None:
    best = info(kind="best", best_round=3, test_accuracy=0.95, created="2025-06-01T12:30:00")
    assert best.kind == "best (round 3)"
    assert best.label().startswith("2025-06-01 12:30 · acc 95.0% · best (round 3) · ?")
    assert best.details()["kind"] == "best (round 3)"
    final = info(kind="final")
    assert final.kind == "final" and " · final · " in final.label()
    assert info(kind="best").kind == "best"  # no round given
    assert info(kind="best", best_round="soon").kind == "best"
    assert info(kind="something-else").kind is None
    assert info().kind is None


def test_bad_or_missing_metadata_values_show_as_unknown_not_errors() -> None:
    m = info(rounds="many", contributors="{not json", test_accuracy="nan", created="yesterday")

    assert m.label() == "m.safetensors · ? · mlp · 1\u00d728\u00d728"
    assert set(m.details().values()) >= {"?"}
    assert m.rounds is None and m.nodes is None
    assert m.test_accuracy is None and m.created is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[["a","b"],["b","c"]]', 3),
        ("[]", 0),
        ('[["a"], "junk", [1, "b"]]', 2),
        ('{"a": 1}', None),
        ("", None),
        (None, None),
    ],
)
def test_count_contributors(text: str | None, expected: int | None) -> None:
    assert count_contributors(text) == expected


def test_created_times_are_utc_and_sort_newest_first() -> None:
    assert parse_created("2025-01-01T10:00:00Z") == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert parse_created("2025-01-01T12:00:00+02:00") == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert parse_created("2025-01-01T10:00:00") == datetime(2025, 1, 1, 10, tzinfo=UTC)
    old, new, undated = (
        info(created="2024-01-01T00:00:00Z"),
        info(created="2025-01-01T00:00:00Z"),
        info(),
    )

    assert newest_first([old, undated, new]) == [new, old, undated]


def test_api_metadata_with_an_object_spec_becomes_weights_metadata() -> None:
    spec = ModelSpec(hidden=(64,), dropout=())

    meta = meta_from_api({"model_spec": spec.to_dict(), "rounds": 4, "dataset": "mnist"})

    assert meta.spec == spec
    assert meta.extra["rounds"] == "4"
    assert meta.extra["dataset"] == "mnist"


def test_api_metadata_with_a_bad_spec_is_refused() -> None:
    with pytest.raises(InvalidModelError):
        meta_from_api({"model_spec": {"arch": "transformer"}})


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(arch="cnn", channels=(4, 8), hidden=(16,)), ModelSpec(arch="lenet5")],
    ids=["cnn", "lenet5"],
)
def test_conv_models_of_28x28_digits_load_and_predict(spec: ModelSpec) -> None:
    model = load_model_bytes(model_bytes(init_state(spec, seed=3), spec))

    assert model.spec == spec
    prediction = model.predict(np.full((28, 28), 255, np.uint8))
    assert len(prediction.probabilities) == 10
    assert sum(prediction.probabilities) == pytest.approx(1.0)


def test_a_conv_model_of_other_images_is_refused_even_with_784_inputs() -> None:
    spec = ModelSpec(arch="cnn", input_shape=(4, 14, 14), kernel=3)
    with pytest.raises(CannotServeError, match="4 channels"):
        load_model_bytes(model_bytes(init_state(spec, seed=1), spec))
