"""Model specs: bounds, JSON round trips, stable parameter names, deterministic initial weights.

The zoo's other archs are tested in ``test_zoo.py``."""

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
        {"arch": "transformer"},
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
        ({"hidden": [8], "layers": 2}, r"unknown model spec fields: \['layers'\]"),
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
    assert not any(isinstance(m, nn.Dropout) for m in build_model(with_zero).modules())


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


def test_normalize_broadcasts_one_value_per_channel() -> None:
    spec = ModelSpec(
        arch="cnn",
        input_shape=(3, 8, 8),
        kernel=3,
        norm_mean=(0.0, 0.5, 1.0),
        norm_std=(1.0, 0.5, 0.25),
    )
    out = normalize(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8), spec)
    assert out.shape == (2, 3, 8, 8)
    assert out[:, 0].eq(1.0).all() and out[:, 1].eq(1.0).all() and out[:, 2].eq(0.0).all()
    single = normalize(torch.full((3, 8, 8), 255, dtype=torch.uint8), spec)
    assert torch.equal(single, out[0])


def test_one_norm_value_applies_to_every_shape_as_before() -> None:
    pixels = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    flat = normalize(pixels, ModelSpec())
    assert torch.equal(
        normalize(pixels.reshape(5, 1, 28, 28), ModelSpec()), flat.reshape(5, 1, 28, 28)
    )
    assert torch.equal(flat, (pixels.float() / 255.0 - 0.1307) / 0.3081)


def test_normalize_computes_in_place_on_its_own_copy_only() -> None:
    """It works in place for speed, but on a copy: a float input is left as it was."""
    pixels = torch.tensor([[0.0, 255.0]])
    out = normalize(pixels, ModelSpec())
    assert torch.equal(pixels, torch.tensor([[0.0, 255.0]]))
    assert out.data_ptr() != pixels.data_ptr()
    assert torch.allclose(out, torch.tensor([[-0.1307 / 0.3081, (1 - 0.1307) / 0.3081]]))


# init_state(ModelSpec(), 0) as recorded before the zoo: saved models and tests rely on it.
SEED0 = {
    "1.weight": ((256, 784), (-0.00026739, 0.0191587, -0.02939447), 11.015339755864801),
    "1.bias": ((256,), (-0.01171778, 0.01326992, -0.00246868), -0.5794029836688424),
    "4.weight": ((128, 256), (-0.01537146, 0.00967591, 0.04445958), 0.49172674864530563),
    "4.bias": ((128,), (-0.06006207, 0.0447931, -0.05434553), -0.545873612165451),
    "7.weight": ((64, 128), (0.06040414, -0.01350754, 0.07773482), -3.853666709902427),
    "7.bias": ((64,), (-0.00758462, -0.03468986, -0.04793349), 0.3268890893086791),
    "9.weight": ((10, 64), (-0.10873851, -0.06948712, 0.01215559), -3.7696986943483353),
    "9.bias": ((10,), (0.04265395, -0.11192454, -0.04116544), 0.4230286777019501),
}


def test_the_default_mlp_starts_from_the_same_weights_as_before_the_zoo() -> None:
    state = init_state(ModelSpec(), 0)
    assert list(state) == list(SEED0)
    for name, (shape, first, total) in SEED0.items():
        assert tuple(state[name].shape) == shape
        assert state[name].reshape(-1)[:3].tolist() == pytest.approx(first, abs=1e-8)
        assert float(state[name].double().sum()) == pytest.approx(total, rel=1e-9)


OLD_DICT = {
    "arch": "mlp",
    "input_shape": [1, 28, 28],
    "hidden": [256, 128, 64],
    "dropout": [0.3, 0.2],
    "num_classes": 10,
    "norm_mean": 0.1307,
    "norm_std": 0.3081,
}


def test_a_spec_saved_before_the_zoo_loads_and_is_written_the_same() -> None:
    spec = ModelSpec.from_dict(OLD_DICT)
    assert spec == ModelSpec()
    assert spec.norm_mean == (0.1307,) and spec.norm_std == (0.3081,)
    assert spec.to_dict() == OLD_DICT  # older nodes and files read it unchanged
    assert ModelSpec(norm_mean=0.5) == ModelSpec(norm_mean=(0.5,))


def test_a_float_norm_of_an_old_file_loads_for_any_arch() -> None:
    spec = ModelSpec.from_dict({"arch": "cnn", "norm_mean": 0.5, "norm_std": [0.25]})
    assert (spec.norm_mean, spec.norm_std) == ((0.5,), (0.25,))
