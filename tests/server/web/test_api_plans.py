"""Shard plans and unprepared datasets over the real API: 409 while a job trains, and a
404 that says whether a dataset is unknown or only needs preparing."""

from __future__ import annotations

import pytest

from node.shared.protocol import Train
from server.datasets import CATALOG
from tests.server.web.conftest import Client, MakeClient, connect, error_of, prepare_mnist


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def test_planning_shards_while_a_job_runs_is_a_conflict(client: Client) -> None:
    a, b = await connect(client, "a"), await connect(client, "b")
    await prepare_mnist(client)
    resp = await client.post("/train/mnist/prepare")
    assert resp.status == 200, await resp.text()
    assert {s["node_id"] for s in (await resp.json())["shards"]} == {"a", "b"}

    resp = await client.post("/train/mnist?epochs=3")
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    await a.expect(Train)
    await b.expect(Train)

    error = await error_of(await client.post("/train/mnist/prepare"), 409)
    assert error["code"] == "conflict"
    assert job_id in error["message"] and "POST /jobs/stop" in error["message"]
    error = await error_of(await client.post("/train/mnist/prepare?partition=classes:2"), 409)
    assert job_id in error["message"]


async def test_an_unknown_dataset_is_called_unknown_and_the_known_ones_are_listed(
    client: Client,
) -> None:
    for route in ("/train/cifar", "/train/cifar/prepare"):
        error = await error_of(await client.post(route), 404)
        message = error["message"]
        assert "unknown dataset 'cifar'" in message and "not prepared" not in message
        assert all(name in message for name in CATALOG)
        assert "POST /datasets/import" in message


@pytest.mark.parametrize("dataset", sorted(set(CATALOG) - {"mnist"}))
async def test_a_known_dataset_not_yet_prepared_says_how_to_prepare_it(
    client: Client, dataset: str
) -> None:
    error = await error_of(await client.post(f"/train/{dataset}"), 404)
    assert f"dataset {dataset!r} is not prepared" in error["message"]
    assert f"POST /datasets/{dataset}/prepare first" in error["message"]


async def test_mnist_not_yet_prepared_names_both_of_its_routes(client: Client) -> None:
    error = await error_of(await client.post("/train/mnist/prepare"), 404)
    assert "POST /datasets/mnist/prepare" in error["message"]
    assert "/datasets/prepare-mnist" in error["message"]
