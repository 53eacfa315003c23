"""A job's request: rounds, model and training settings, with the server's settings as defaults."""

from __future__ import annotations

from typing import Any

import pytest

from node.shared.model import ModelSpec, parameter_count
from node.shared.protocol import TrainConfig
from server.core.job_request import (
    TRAIN_FIELDS,
    DataSchema,
    JobDefaults,
    JobRequestError,
    job_request,
    train_view,
)
from server.core.partition import IID, Classes, Dirichlet
from server.core.sampling import EVERYONE, Sampling

MNIST = DataSchema((1, 28, 28), 10, (0.13,), (0.31,))
CIFAR = DataSchema((3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
DEFAULTS = JobDefaults(
    spec=ModelSpec(hidden=(64, 32), dropout=(0.1,)),
    train=TrainConfig(lr=0.002, batch_size=16),
    rounds=3,
    max_rounds=50,
    max_params=20_000_000,
)


def request(
    query: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    data: DataSchema = MNIST,
    defaults: JobDefaults = DEFAULTS,
) -> Any:
    return job_request(defaults, data, query or {}, body)


def test_the_seeds_call_takes_the_settings_and_the_datasets_normalisation() -> None:
    got = request({"epochs": "5"})
    assert got.rounds == 5
    assert got.train == DEFAULTS.train
    assert got.spec == ModelSpec(
        hidden=(64, 32), dropout=(0.1,), norm_mean=(0.13,), norm_std=(0.31,)
    )
    assert request().rounds == DEFAULTS.rounds


def test_the_settings_mlp_is_sized_to_any_dataset() -> None:
    spec = request(data=CIFAR).spec
    assert (spec.arch, spec.hidden, spec.input_shape) == ("mlp", (64, 32), (3, 32, 32))
    assert spec.norm_mean == CIFAR.norm_mean and spec.norm_std == CIFAR.norm_std


@pytest.mark.parametrize("arch", ["cnn", "lenet5", "resnet"])
def test_an_arch_by_name_gets_that_archs_defaults(arch: str) -> None:
    spec = request({"model": arch}, data=CIFAR).spec
    assert spec == ModelSpec(
        arch=arch,
        input_shape=(3, 32, 32),
        norm_mean=CIFAR.norm_mean,
        norm_std=CIFAR.norm_std,
    )
    assert request(body={"model": arch}, data=CIFAR).spec == spec


def test_naming_the_settings_arch_keeps_the_settings_sizes() -> None:
    assert request({"model": "mlp"}).spec.hidden == (64, 32)


def test_a_whole_spec_in_the_body() -> None:
    body = {
        "rounds": 2,
        "model": {"arch": "cnn", "channels": [8, 16], "hidden": [32], "norm_mean": 0.5},
        "train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 64, "local_epochs": 2},
    }
    got = request(body=body)
    assert got.rounds == 2
    assert (got.spec.channels, got.spec.hidden) == ((8, 16), (32,))
    # A spec that sets its normalisation keeps it; the dataset fills what it left out.
    assert (got.spec.norm_mean, got.spec.norm_std) == ((0.5,), (0.3081,))
    assert got.train == TrainConfig(
        optimizer="sgd", lr=0.05, batch_size=64, local_epochs=2, max_batches=None
    )
    assert train_view(got.train) == {
        "optimizer": "sgd",
        "lr": 0.05,
        "batch_size": 64,
        "local_epochs": 2,
        "max_batches": None,
        "proximal_mu": 0.0,
        "keep_optimizer_state": False,
    }
    assert set(train_view(got.train)) == set(TRAIN_FIELDS)


def test_the_query_and_the_body_may_both_say_the_same() -> None:
    assert request({"epochs": "4", "model": "cnn"}, {"rounds": 4, "model": "cnn"}).rounds == 4


@pytest.mark.parametrize(
    ("query", "body", "fragment"),
    [
        ({}, {"epochs": 3}, "epochs: unknown field"),
        ({"model": "transformer"}, None, "model: unknown arch 'transformer'"),
        ({}, {"model": 7}, "model: an arch name or a model spec object"),
        ({}, {"model": {"arch": "cnn", "layers": 3}}, "unknown model spec fields"),
        ({}, {"model": {"arch": "cnn", "depth": 8}}, "model.depth: arch 'cnn' does not use it"),
        ({}, {"model": {"arch": "mlp", "hidden": [70000]}}, "model.hidden layers must be"),
        (
            {},
            {"model": {"arch": "cnn", "input_shape": [3, 32, 32]}},
            r"model.input_shape: the model takes \[3, 32, 32\], the samples are \[1, 28, 28\]",
        ),
        ({}, {"model": {"arch": "cnn", "num_classes": 5}}, "model.num_classes: the model has 5"),
        (
            {},
            {"model": {"arch": "mlp", "hidden": [4096, 4096]}},
            r"model.parameters: 20,\d{3},\d{3} is over the limit of 20,000,000 "
            r"\(the server's FEDAVG_MAX_PARAMS\)",
        ),
        ({}, {"train": {"lr": -1}}, "train: lr must be a positive finite number"),
        ({}, {"train": {"lr": "fast"}}, "train.lr: expected int or float"),
        ({}, {"train": {"batch_size": True}}, "train.batch_size: expected int"),
        ({}, {"train": {"optimizer": "lbfgs"}}, "train.optimizer: one of adam, sgd"),
        ({}, {"train": {"seed": 3}}, "train.seed: unknown field"),
        ({}, {"train": [1]}, "train: an object of"),
        ({"epochs": "x"}, None, "epochs='x' is not an integer"),
        ({"epochs": "0"}, None, "epochs must be within 1..50, got 0"),
        ({}, {"rounds": 51}, "rounds must be within 1..50, got 51"),
        ({}, {"rounds": "3"}, "rounds: '3' is not an integer"),
        ({"epochs": "3"}, {"rounds": 4}, "rounds: the query says 3 and the body 4"),
        ({"model": "cnn"}, {"model": "mlp"}, "model: the query says 'cnn' and the body 'mlp'"),
    ],
)
def test_a_bad_request_names_its_field(
    query: dict[str, str], body: dict[str, Any] | None, fragment: str
) -> None:
    with pytest.raises(JobRequestError, match=fragment):
        request(query, body)


def test_the_budget_is_the_servers_not_the_hard_ceiling() -> None:
    small = JobDefaults(DEFAULTS.spec, DEFAULTS.train, 1, 5, max_params=100_000)
    assert parameter_count(ModelSpec(arch="cnn")) > 100_000
    with pytest.raises(JobRequestError, match="over the limit of 100,000"):
        request({"model": "cnn"}, defaults=small)
    assert request({"model": "lenet5"}, defaults=small).spec.arch == "lenet5"


def test_the_partition_comes_from_the_query_the_body_or_the_settings() -> None:
    assert request().partition == IID
    assert request({"partition": "dirichlet:0.5"}).partition == Dirichlet(0.5)
    assert request(body={"partition": "classes:2"}).partition == Classes(2)
    # Compared once parsed: two spellings of one partition agree.
    both = request({"partition": "dirichlet:.5"}, {"partition": "dirichlet:0.5"})
    assert both.partition == Dirichlet(0.5)
    skewed = JobDefaults(DEFAULTS.spec, DEFAULTS.train, 1, 5, 10**6, partition=Classes(3))
    assert request(defaults=skewed).partition == Classes(3)


@pytest.mark.parametrize(
    ("query", "body", "fragment"),
    [
        ({"partition": "zipf:2"}, None, "partition: unknown kind 'zipf'"),
        ({"partition": "dirichlet:0"}, None, "partition: "),
        ({}, {"partition": 3}, "partition: expected a string"),
        ({"partition": "iid"}, {"partition": "classes:2"}, "partition: the query says 'iid'"),
    ],
)
def test_a_bad_partition_names_its_field(
    query: dict[str, str], body: dict[str, Any] | None, fragment: str
) -> None:
    with pytest.raises(JobRequestError, match=fragment):
        request(query, body)


def test_the_server_optimizer_comes_from_the_query_the_body_or_the_settings() -> None:
    assert request().server_opt == {"strategy": "none"}
    assert request({"strategy": "fedadam"}).server_opt == {
        "strategy": "fedadam",
        "server_lr": 0.1,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
    }
    body = {"strategy": "fedavgm", "server_lr": 0.5, "server_momentum": 0.9}
    assert request(body=body).server_opt == body
    assert request({"strategy": "fedyogi", "tau": "0.01"}).server_opt["tau"] == 0.01
    tuned = JobDefaults(
        DEFAULTS.spec,
        DEFAULTS.train,
        1,
        5,
        10**6,
        server_opt={"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.5},
    )
    # Hyper-parameters alone tune the server's own optimizer.
    assert request({"server_lr": "0.3"}, defaults=tuned).server_opt == {
        "strategy": "fedavgm",
        "server_lr": 0.3,
        "server_momentum": 0.5,
    }
    assert request(body={"aggregation": "median"}).aggregation == "median"
    assert request().aggregation == "weighted"


@pytest.mark.parametrize(
    ("query", "body", "fragment"),
    [
        ({"strategy": "sgd"}, None, "strategy: unknown server optimizer 'sgd'"),
        ({"strategy": "fedadam", "server_lr": "fast"}, None, "server_lr='fast' is not a number"),
        ({}, {"strategy": "fedadam", "server_lr": -1}, "server_lr: must be"),
        ({}, {"strategy": "fedadam", "server_momentum": 0.5}, "server_momentum: fedadam does"),
        ({}, {"server_lr": 0.5}, "server_lr: none does not use it"),
        ({"strategy": "fedadam"}, {"strategy": "fedyogi"}, "strategy: the query says"),
        ({}, {"aggregation": "mean"}, "aggregation: one of weighted, uniform"),
    ],
)
def test_a_bad_server_optimizer_names_its_field(
    query: dict[str, str], body: dict[str, Any] | None, fragment: str
) -> None:
    with pytest.raises(JobRequestError, match=fragment):
        request(query, body)


def test_client_sampling_comes_from_the_query_the_body_or_the_settings() -> None:
    assert request().sampling == EVERYONE
    assert request({"fraction": "0.1", "min_nodes": "3"}).sampling == Sampling(0.1, 3)
    assert request(body={"fraction": 0.25}).sampling == Sampling(0.25, 1)
    sampled = JobDefaults(DEFAULTS.spec, DEFAULTS.train, 1, 5, 10**6, sampling=Sampling(0.5, 2))
    assert request(defaults=sampled).sampling == Sampling(0.5, 2)
    assert request({"min_nodes": "4"}, defaults=sampled).sampling == Sampling(0.5, 4)


@pytest.mark.parametrize(
    ("query", "body", "fragment"),
    [
        ({"fraction": "0"}, None, r"fraction must be a number in \(0, 1\]"),
        ({"fraction": "lots"}, None, "fraction must be a number"),
        ({}, {"fraction": 2}, "fraction must be"),
        ({}, {"min_nodes": 0}, "min_nodes must be 1.."),
        ({"min_nodes": "two"}, None, "min_nodes must be a whole number"),
        ({"fraction": "0.5"}, {"fraction": 0.25}, "fraction: the query says"),
    ],
)
def test_bad_sampling_names_its_field(
    query: dict[str, str], body: dict[str, Any] | None, fragment: str
) -> None:
    with pytest.raises(JobRequestError, match=fragment):
        request(query, body)
