"""``POST /train/{dataset}`` choosing its model and training settings, over real sockets."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from node.shared.model import ModelSpec
from node.shared.protocol import Train, TrainConfig
from node.shared.weights import decode_weights
from tests.server.web.conftest import (
    Client,
    MakeClient,
    connect,
    error_of,
    job_spec,
    prepare_mnist,
)


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    client = await make_client(train_config=TrainConfig(lr=0.003, batch_size=8))
    await prepare_mnist(client)
    return client


async def test_model_cnn_in_the_query_trains_the_zoos_cnn(client: Client) -> None:
    node = await connect(client, "a")
    resp = await client.post("/train/mnist?epochs=2&model=cnn")
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    default = await job_spec(client)
    expected = ModelSpec(arch="cnn", norm_mean=default.norm_mean, norm_std=default.norm_std)
    assert started["model"] == expected.to_dict()
    assert started["train"]["lr"] == 0.003  # the settings' defaults stay

    train = await node.expect(Train)
    assert (train.model_spec, train.rounds) == (expected, 2)
    state, meta = decode_weights(await (await client.get(train.weights_url)).read())
    assert meta.spec == expected
    assert state["0.weight"].shape == (32, 1, 5, 5)  # the first convolution, not a Linear

    status = await (await client.get("/sync/status")).json()
    assert status["model"]["arch"] == "cnn"


async def test_a_json_body_carries_a_spec_and_the_training_settings(client: Client) -> None:
    node = await connect(client, "a")
    body = {
        "rounds": 3,
        "model": {"arch": "lenet5", "channels": [4, 8], "hidden": [16]},
        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 16, "local_epochs": 2},
    }
    resp = await client.post("/train/mnist", json=body)
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["rounds"] == 3
    assert started["train"] == {
        "optimizer": "sgd",
        "lr": 0.1,
        "batch_size": 16,
        "local_epochs": 2,
        "max_batches": None,
        "proximal_mu": 0.0,
        "keep_optimizer_state": False,
    }
    train = await node.expect(Train)
    assert (train.model_spec.arch, train.model_spec.channels) == ("lenet5", (4, 8))
    assert (train.config.optimizer, train.config.lr, train.config.local_epochs) == ("sgd", 0.1, 2)

    runs = (await (await client.get("/runs")).json())["runs"]
    assert runs[0]["model_spec"]["arch"] == "lenet5"  # recorded, so a restart trains the same


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/train/mnist?model=gpt", None, 400, "model: unknown arch 'gpt'"),
        (
            "/train/mnist",
            {"model": {"arch": "cnn", "channels": [256, 256], "hidden": [4096]}},
            400,
            "model.parameters: .* over the limit of 20,000,000",
        ),
        (
            "/train/mnist",
            {"model": {"arch": "resnet", "input_shape": [3, 32, 32]}},
            400,
            r"model.input_shape: the model takes \[3, 32, 32\], the samples are \[1, 28, 28\]",
        ),
        ("/train/mnist", {"train": {"lr": 0}}, 400, "train: lr must be a positive"),
        ("/train/mnist", {"epochs": 2}, 400, "epochs: unknown field"),
        ("/train/mnist?epochs=2", {"rounds": 3}, 400, "rounds: the query says 2 and the body 3"),
        ("/train/mnist", [1, 2], 400, "the body must be a JSON object"),
        (
            "/train/nothing-here",
            {"model": "cnn"},
            404,
            "unknown dataset .nothing-here.: the catalogue has",
        ),
    ],
)
async def test_a_bad_choice_is_refused_with_its_field_and_no_job_starts(
    client: Client, path: str, body: Any, status: int, fragment: str
) -> None:
    await connect(client, "a")
    error = await error_of(await client.post(path, json=body), status)
    assert re.search(fragment, error["message"]), error["message"]
    assert (await (await client.get("/runs")).json())["runs"] == []


async def test_a_body_that_is_not_json_or_too_big_is_refused(client: Client) -> None:
    await connect(client, "a")
    error = await error_of(await client.post("/train/mnist", data=b"{rounds: 2"), 400)
    assert "not JSON" in error["message"]
    error = await error_of(await client.post("/train/mnist", data=b'{"rounds": NaN}'), 400)
    assert "NaN is not a number JSON allows" in error["message"]
    huge = json.dumps({"model": {"arch": "mlp", "hidden": [1] * 70_000}}).encode()
    await error_of(await client.post("/train/mnist", data=huge), 413)
    assert (await (await client.get("/runs")).json())["runs"] == []


async def test_a_dirichlet_plan_skews_each_nodes_labels_and_shows_them(client: Client) -> None:
    await connect(client, "a")
    await connect(client, "b")
    resp = await client.post("/train/mnist/prepare?partition=dirichlet:0.1")
    assert resp.status == 200, await resp.text()
    plan = await resp.json()
    assert plan["partition"] == "dirichlet:0.1"
    iid = await (await client.post("/train/mnist/prepare")).json()
    assert iid["partition"] == "iid" and iid["plan"] != plan["plan"]  # their own shard files
    for shards in (plan["shards"], iid["shards"]):
        assert all(sum(s["labels"]) == s["samples"] and len(s["labels"]) == 10 for s in shards)

    def skew(shards: list[dict[str, Any]]) -> float:
        """Mean total-variation distance of a node's label mix from the whole split's."""
        total = [sum(col) for col in zip(*(s["labels"] for s in shards), strict=True)]
        whole = [t / sum(total) for t in total]
        distances = [
            0.5 * sum(abs(c / s["samples"] - w) for c, w in zip(s["labels"], whole, strict=True))
            for s in shards
        ]
        return float(sum(distances)) / len(distances)

    assert skew(plan["shards"]) > 0.3 > 0.05 > skew(iid["shards"])

    node = await connect(client, "a")
    resp = await client.post("/train/mnist", json={"rounds": 1, "partition": "dirichlet:0.1"})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["partition"] == "dirichlet:0.1"
    await node.expect(Train)
    nodes = (await (await client.get("/nodes")).json())["nodes"]
    labelled = [n for n in nodes if n["shard_labels"] is not None]
    assert labelled and all(sum(n["shard_labels"]) == n["shard_samples"] for n in labelled)
    status = await (await client.get("/sync/status")).json()
    assert status["partition"] == "dirichlet:0.1"


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/train/mnist?partition=zipf", None, "partition: unknown kind 'zipf'"),
        ("/train/mnist/prepare?partition=dirichlet:-1", None, "partition: "),
        ("/train/mnist", {"partition": "classes:1"}, "partition: classes:1 over 1 node"),
    ],
)
async def test_a_partition_that_cannot_be_planned_is_refused(
    client: Client, path: str, body: Any, fragment: str
) -> None:
    await connect(client, "a")
    error = await error_of(await client.post(path, json=body), 400)
    assert fragment in error["message"], error["message"]
    assert (await (await client.get("/runs")).json())["runs"] == []
