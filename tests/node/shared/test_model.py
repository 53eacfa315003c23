"""Model specs: bounds, JSON round trips, stable parameter names, deterministic initial weights."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from node.shared.errors import SpecError
from node.shared.model import (
    MAX_INPUT_ELEMENTS,
    MAX_LAYER_WIDTH,
    MAX_LAYERS,
    ModelSpec,
    build_model,
    init_state,
    normalize,
    parameter_count,
)
from node.shared.weights import expected_layout

SMALL = ModelSpec(input_shape=(1, 4, 4), hidden=(6, 5), dropout=(0.1,), num_classes=3)


def test_default_spec_is_the_mnist_mlp() -> None:
    spec = ModelSpec()
    assert spec.input_shape == (1, 28, 28)
    assert spec.input_size == 784
    assert spec.hidden == (256, 128, 64)
    assert spec.num_classes == 10


@pytest.mark.parametrize(
    "changes",
    [
        {"arch": "cnn"},
        {"input_shape": ()},
        {"input_shape": (1, 0, 28)},
        {"input_shape": (1, -28, 28)},
        {"input_shape": (MAX_INPUT_ELEMENTS + 1,)},
        {"hidden": (0,)},
        {"hidden": (-4,)},
        {"hidden": (MAX_LAYER_WIDTH + 1,)},
        {"hidden": (8,) * (MAX_LAYERS + 1), "dropout": ()},
        {"hidden": (8,), "dropout": (0.1, 0.1)},  # more dropouts than layers
        {"dropout": (1.0, 0.2)},
        {"dropout": (-0.1, 0.2)},
        {"dropout": (math.nan, 0.2)},
        {"num_classes": 1},
        {"num_classes": MAX_LAYER_WIDTH + 1},
        {"norm_std": 0.0},
        {"norm_std": -1.0},
        {"norm_std": math.inf},
        {"norm_mean": math.nan},
    ],
)
def test_refuses_specs_out_of_bounds(changes: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        replace(ModelSpec(), **changes)


def test_accepts_the_bounds_themselves() -> None:
    spec = ModelSpec(
        input_shape=(2,), hidden=(1,) * MAX_LAYERS, dropout=(), num_classes=2, norm_std=1e-9
    )
    assert len(spec.hidden) == MAX_LAYERS
    assert ModelSpec(hidden=(), dropout=()).hidden == ()


@pytest.mark.parametrize("spec", [ModelSpec(), SMALL, ModelSpec(hidden=(), dropout=())])
def test_dict_and_json_round_trip(spec: ModelSpec) -> None:
    data = spec.to_dict()
    assert all(not isinstance(v, tuple) for v in data.values())
    assert ModelSpec.from_dict(data) == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert spec.to_json() == json.dumps(data, sort_keys=True)


def test_from_dict_fills_defaults() -> None:
    assert ModelSpec.from_dict({}) == ModelSpec()
    assert ModelSpec.from_dict({"hidden": [32], "dropout": []}) == ModelSpec(
        hidden=(32,), dropout=()
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "must be an object"),
        ("mlp", "must be an object"),
        (None, "must be an object"),
        ({"hidden": [8], "depth": 2}, r"unknown model spec fields: \['depth'\]"),
        ({"hidden": [True]}, "bad model spec"),
        ({"hidden": [8.0]}, "bad model spec"),
        ({"hidden": "256"}, "bad model spec"),
        ({"hidden": 256}, "bad model spec"),
        ({"num_classes": "10"}, "bad model spec"),
        ({"num_classes": 10.0}, "bad model spec"),
        ({"input_shape": None}, "bad model spec"),
        ({"dropout": ["high"]}, "bad model spec"),
        ({"dropout": 0.5}, "bad model spec"),
        ({"norm_std": "x"}, "bad model spec"),
        ({"hidden": [0]}, "hidden layers"),
    ],
)
def test_from_dict_refuses(data: Any, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize("text", ["", "{", "not json", "[" * 5000 + "]" * 5000])
def test_from_json_refuses_non_json(text: str) -> None:
    with pytest.raises(SpecError):
        ModelSpec.from_json(text)


def test_build_model_shape_and_stable_names() -> None:
    model = build_model(SMALL)
    assert isinstance(model, nn.Sequential)
    # Flatten, Linear, ReLU, Dropout, Linear, ReLU, Linear: indices are the parameter names.
    assert list(model.state_dict()) == [
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
        "6.weight",
        "6.bias",
    ]
    assert list(build_model(SMALL).state_dict()) == list(model.state_dict())
    logits = model(torch.zeros(7, 1, 4, 4))
    assert logits.shape == (7, 3)


def test_zero_dropout_adds_no_layer() -> None:
    with_zero = replace(SMALL, dropout=(0.0, 0.0))
    without = replace(SMALL, dropout=())
    assert list(build_model(with_zero).state_dict()) == list(build_model(without).state_dict())
    assert not any(isinstance(m, nn.Dropout) for m in build_model(with_zero))


@pytest.mark.parametrize("spec", [ModelSpec(), SMALL, ModelSpec(hidden=(), dropout=())])
def test_expected_layout_matches_build_model(spec: ModelSpec) -> None:
    state = build_model(spec).state_dict()
    assert expected_layout(spec) == {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


@pytest.mark.parametrize("spec", [ModelSpec(), SMALL, ModelSpec(hidden=(), dropout=())])
def test_parameter_count(spec: ModelSpec) -> None:
    counted = sum(p.numel() for p in build_model(spec).parameters())
    assert parameter_count(spec) == counted
    assert parameter_count(ModelSpec()) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 64 + 64 + 650


def test_init_state_is_deterministic_per_seed() -> None:
    a, b, c = init_state(SMALL, 7), init_state(SMALL, 7), init_state(SMALL, 8)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in a.values())


def test_init_state_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    init_state(SMALL, 0)
    init_state(SMALL, 99)
    assert torch.equal(torch.rand(5), expected)


def test_init_state_loads_into_a_fresh_model() -> None:
    model = build_model(SMALL)
    model.load_state_dict(init_state(SMALL, 3))


def test_normalize_matches_the_training_transform() -> None:
    pixels = torch.tensor([[0, 255]], dtype=torch.uint8)
    out = normalize(pixels, ModelSpec())
    expected = torch.tensor([[(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081]])
    assert torch.allclose(out, expected)
    assert out.dtype == torch.float32
