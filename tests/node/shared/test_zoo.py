"""The model zoo: each arch builds, runs, counts its parameters, round-trips, refuses bad sizes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from node.shared.errors import ProtocolError, SpecError
from node.shared.model import (
    MAX_CHANNELS,
    MAX_KERNEL,
    MAX_PARAMS,
    ModelSpec,
    build_model,
    init_state,
    parameter_count,
)
from node.shared.protocol import Train, TrainConfig, decode, encode
from node.shared.weights import expected_layout

SPECS = {
    "mlp": ModelSpec(),
    "cnn": ModelSpec(arch="cnn"),
    "cnn-32": ModelSpec(arch="cnn", input_shape=(3, 32, 32), channels=(8, 16), hidden=(32,)),
    "lenet5": ModelSpec(arch="lenet5"),
    "lenet5-32": ModelSpec(arch="lenet5", input_shape=(3, 32, 32), norm_mean=(0.4, 0.5, 0.6)),
    "resnet": ModelSpec(arch="resnet", input_shape=(3, 32, 32), depth=8),
    "resnet-none": ModelSpec(arch="resnet", input_shape=(3, 32, 32), depth=14, norm="none"),
    "resnet-batch": ModelSpec(arch="resnet", input_shape=(3, 32, 32), depth=8, norm="batch"),
    "resnet-28": ModelSpec(arch="resnet", input_shape=(1, 28, 28), channels=(8, 16), depth=6),
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_each_arch_builds_runs_and_counts_its_parameters(spec: ModelSpec) -> None:
    model = build_model(spec).eval()
    logits = model(torch.randn(3, *spec.input_shape))
    assert logits.shape == (3, spec.num_classes)
    assert parameter_count(spec) == sum(p.numel() for p in model.parameters())
    layout = expected_layout(spec)
    assert layout == {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert all(dtype == torch.float32 for _, dtype in layout.values())  # no int buffers


def test_the_cnn_defaults_are_mcmahans_mnist_cnn() -> None:
    spec = ModelSpec(arch="cnn")
    assert (spec.channels, spec.kernel, spec.hidden, spec.dropout) == ((32, 64), 5, (512,), ())
    conv1 = 1 * 32 * 5 * 5 + 32
    conv2 = 32 * 64 * 5 * 5 + 64
    fc = 64 * 7 * 7 * 512 + 512  # 'same' padding: 28 -> 14 -> 7 after two poolings
    out = 512 * 10 + 10
    assert parameter_count(spec) == conv1 + conv2 + fc + out == 1_663_370


def test_lenet5_is_the_classic_one() -> None:
    spec = ModelSpec(arch="lenet5")
    # 28x28 padded to 32: conv 6@5x5 -> 28, pool 14, conv 16@5x5 -> 10, pool 5.
    expected = (6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
    assert parameter_count(spec) == expected + 84 * 10 + 10 == 61_706
    assert parameter_count(SPECS["lenet5-32"]) == expected + 84 * 10 + 10 + 2 * 6 * 25


def test_resnet_depth_sets_the_blocks_per_stage() -> None:
    spec = ModelSpec(arch="resnet", input_shape=(3, 32, 32))
    assert (spec.depth, spec.channels, spec.norm) == (20, (16, 32, 64), "group")
    model = build_model(spec)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 9  # (20 - 2) / 2 per block
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_arch_round_trips_through_json_and_the_train_frame(spec: ModelSpec) -> None:
    data = json.loads(spec.to_json())
    assert ModelSpec.from_dict(data) == spec
    train = Train(
        job_id="j",
        dataset="d",
        shard_url="/s",
        shard_sha256="",
        model_spec=spec,
        config=TrainConfig(),
        rounds=1,
        round=1,
        weights_url="/w",
        weights_sha256="",
    )
    assert decode(encode(train)) == train


def test_to_dict_carries_only_the_fields_an_arch_uses() -> None:
    assert set(ModelSpec(arch="resnet").to_dict()) == {
        "arch",
        "input_shape",
        "num_classes",
        "norm_mean",
        "norm_std",
        "channels",
        "depth",
        "norm",
    }
    assert "kernel" not in ModelSpec().to_dict()
    assert ModelSpec.from_dict({"arch": "cnn"}) == ModelSpec(arch="cnn")
    assert ModelSpec(arch="cnn", kernel=3) != ModelSpec(arch="cnn")


def test_initial_weights_are_deterministic_for_every_arch() -> None:
    for spec in SPECS.values():
        a, b = init_state(spec, 5), init_state(spec, 5)
        assert all(torch.equal(a[k], b[k]) for k in a)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"arch": "vit"}, "arch: unknown 'vit'"),
    ({"arch": "cnn", "channels": ()}, "channels: 1..6 layers"),
    ({"arch": "cnn", "channels": (8,) * 7}, "channels: 1..6 layers"),
    ({"arch": "cnn", "channels": (MAX_CHANNELS + 1,)}, "channels: each"),
    ({"arch": "cnn", "channels": (0, 4)}, "channels: each"),
    ({"arch": "cnn", "kernel": 0}, "kernel: 1.."),
    ({"arch": "cnn", "kernel": MAX_KERNEL + 1}, "kernel: 1.."),
    ({"arch": "cnn", "input_shape": (1, 8, 8), "kernel": 7}, "kernel: 7 is larger than the 4x4"),
    ({"arch": "lenet5", "input_shape": (1, 4, 4)}, "kernel: 5 is larger"),
    ({"arch": "cnn", "input_shape": (1, 8, 8), "kernel": 1, "channels": (4,) * 4}, "channels: 4"),
    ({"arch": "cnn", "input_shape": (784,)}, "input_shape: arch 'cnn' takes"),
    ({"arch": "resnet", "input_shape": (28, 28)}, "input_shape: arch 'resnet' takes"),
    ({"arch": "cnn", "input_shape": (65, 32, 32)}, "input_shape: at most 64"),
    ({"arch": "cnn", "hidden": (70_000,)}, "hidden layers"),
    ({"arch": "lenet5", "dropout": (0.5, 0.5, 0.5)}, "dropout"),
    ({"arch": "cnn", "norm_mean": (0.1, 0.2)}, "norm_mean: one value, or one per"),
    ({"arch": "cnn", "input_shape": (3, 28, 28), "norm_std": (1.0, 1.0)}, "norm_std: one value"),
    ({"norm_std": (0.5, -1.0)}, "norm_std: one value"),
    ({"arch": "resnet", "depth": 21}, r"depth: one of \[8, 14, 20"),
    ({"arch": "resnet", "depth": 2}, "depth: one of"),
    ({"arch": "resnet", "depth": 200}, "depth: one of"),
    ({"arch": "resnet", "channels": (8,) * 5}, "channels: 1..4"),
    ({"arch": "resnet", "norm": "layer"}, "norm: one of group, batch, none; got 'layer'"),
    ({"arch": "resnet", "input_shape": (3, 2, 2)}, "input_shape: a ResNet's"),
    ({"kernel": 3}, "kernel: arch 'mlp' does not use it"),
    ({"arch": "resnet", "hidden": (8,)}, "hidden: arch 'resnet' does not use it"),
    ({"arch": "cnn", "depth": 8}, "depth: arch 'cnn' does not use it"),
    ({"hidden": (10_000, 10_000, 1_001)}, "parameters: .* is over the ceiling of 100,000,000"),
    ({"arch": "cnn", "channels": (2048, 2048)}, "parameters: .* over the ceiling"),
]


@pytest.mark.parametrize(("changes", "fragment"), BAD)
def test_bad_specs_are_refused_naming_the_field(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        ModelSpec(**changes)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"arch": "cnn", "layers": 2}, r"unknown model spec fields: \['layers'\]"),
        ({"arch": "mlp", "channels": [8]}, "channels: arch 'mlp' does not use it"),
        ({"arch": "resnet", "kernel": 3}, "kernel: arch 'resnet' does not use it"),
        ({"arch": "resnet", "norm": 1}, "bad model spec: norm: expected a string"),
        ({"arch": "cnn", "kernel": 5.0}, "bad model spec: kernel"),
        ({"arch": "cnn", "norm_mean": ["a"]}, "bad model spec: norm_mean"),
    ],
)
def test_bad_spec_dicts_are_refused_naming_the_field(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        ModelSpec.from_dict(data)


def test_a_node_refuses_a_train_frame_over_the_ceiling() -> None:
    frame = encode(
        Train(
            job_id="j",
            dataset="d",
            shard_url="/s",
            shard_sha256="",
            model_spec=ModelSpec(hidden=(8,), dropout=()),
            config=TrainConfig(),
            rounds=1,
            round=1,
            weights_url="/w",
            weights_sha256="",
        )
    )
    too_big = frame.replace('"hidden":[8]', '"hidden":[20000,20000]')
    assert too_big != frame
    with pytest.raises(ProtocolError, match="parameters"):
        decode(too_big)


def test_check_input_and_budget_name_the_field() -> None:
    spec = ModelSpec(arch="cnn")
    spec.check_input((1, 28, 28))
    spec.check_input([1, 28, 28])
    with pytest.raises(SpecError, match=r"input_shape: the model takes \[1, 28, 28\]"):
        spec.check_input((3, 32, 32))
    spec.check_budget(parameter_count(spec))
    with pytest.raises(SpecError, match="parameters: 1,663,370 is over the limit of 1,000,000"):
        spec.check_budget(1_000_000)
    assert parameter_count(spec) < MAX_PARAMS
