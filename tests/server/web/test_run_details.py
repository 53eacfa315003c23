"""``GET /runs/{run_id}``: any stored run's row, rounds and per-node metrics, over the real app.

One test runs two real jobs with a hand-made node and reads the first back after the
second; the others seed the SQLite file the app then opens, for the edges (pages, NaN).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from node.shared.protocol import Done, Train, WeightsReady
from node.shared.shards import decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from server.store import RoundRow, Store
from server.web.app import RUN_NODES_PAGE_MAX
from tests.server.web.conftest import Client, FakeNode, MakeClient, connect, error_of, prepare_mnist


async def _get(client: Client, path: str) -> dict[str, Any]:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _job(client: Client, node: FakeNode, rounds: int, train_loss: float) -> str:
    """A job of ``rounds`` rounds, each upload the start weights with ``train_loss``."""
    assert (await client.post(f"/train/mnist?epochs={rounds}")).status == 202
    train = await node.expect(Train)
    _, y = decode_xy(await (await client.get(train.shard_url, headers=node.auth)).read())
    state, _ = decode_weights(await (await client.get(train.weights_url)).read())
    for round_ in range(1, rounds + 1):
        body = encode_weights(
            state, WeightsMeta(spec=train.model_spec, round=round_, job_id=train.job_id)
        )
        params = {
            "job": train.job_id,
            "round": str(round_),
            "samples": str(len(y)),
            "train_loss": str(train_loss * round_),
            "val_accuracy": "0.5",
        }
        resp = await client.post("/sync/weights", params=params, data=body, headers=node.auth)
        assert resp.status == 200, await resp.text()
        await node.expect(WeightsReady if round_ < rounds else Done)
    job_id: str = train.job_id
    return job_id


async def test_an_older_run_is_served_after_a_newer_one(make_client: MakeClient) -> None:
    client = await make_client()
    node = await connect(client, "a")
    await prepare_mnist(client)
    first = await _job(client, node, rounds=2, train_loss=0.25)
    first_history = (await _get(client, "/sync/status"))["history"]
    second = await _job(client, node, rounds=1, train_loss=0.75)
    assert (await _get(client, "/sync/status"))["run_id"] == second

    answer = await _get(client, f"/runs/{first}")
    listed = {r["run_id"]: r for r in (await _get(client, "/runs"))["runs"]}
    assert answer["run"] == listed[first] and answer["run"]["status"] == "completed"
    assert answer["rounds"] == first_history  # what /sync/status said while it was current
    assert [(n["round"], n["name"]) for n in answer["nodes"]] == [(1, "name-a"), (2, "name-a")]
    assert [n["metrics"] for n in answer["nodes"]] == [
        {"train_loss": 0.25, "val_accuracy": 0.5},
        {"train_loss": 0.5, "val_accuracy": 0.5},
    ]
    assert all(n["node_id"] == "a" and n["samples"] > 0 for n in answer["nodes"])
    assert (answer["nodes_total"], answer["offset"], answer["limit"]) == (2, 0, RUN_NODES_PAGE_MAX)
    newer = await _get(client, f"/runs/{second}")
    assert [n["metrics"]["train_loss"] for n in newer["nodes"]] == [0.75]
    assert len(newer["rounds"]) == 1


def _seed(home: Path, run_id: str, rounds: int, nodes: int) -> None:
    """A finished run in the SQLite file under ``home``; round 2's test loss is NaN."""
    store = Store(home / "fedavg.sqlite3")
    store.create_run(
        run_id=run_id,
        dataset="mnist",
        dataset_source="test",
        status="completed",
        rounds=rounds,
        aggregation="weighted",
        model_spec={"arch": "mlp", "hidden": [8]},
        config={"train": {}},
        created=100.0,
        finished=200.0,
    )
    for round_ in range(1, rounds + 1):
        store.record_round(
            RoundRow(
                run_id=run_id,
                round=round_,
                opened_at=100.0 + round_,
                closed_at=101.5 + round_,
                contributors=[f"n{i}" for i in range(nodes)],
                samples=10 * nodes,
                partial=False,
                missing=[],
                test_accuracy=0.5,
                test_loss=math.nan if round_ == 2 else 1.0,
                checkpoint=f"/runs/{run_id}/{round_}",
                sha256="ab" * 32,
            )
        )
        for i in range(nodes):
            metrics = {"train_loss": math.nan if (round_, i) == (2, 0) else 0.5}
            store.record_node_metrics(run_id, round_, f"id-{i}", f"n{i}", 10, metrics, 1.0)
    store.close()


async def test_the_rounds_and_node_rows_come_in_pages_and_nan_is_null(
    make_client: MakeClient, tmp_path: Path
) -> None:
    _seed(tmp_path, "seeded-run", rounds=3, nodes=2)
    client = await make_client(home=tmp_path)
    whole = await _get(client, "/runs/seeded-run")
    assert [r["round"] for r in whole["rounds"]] == [1, 2, 3]
    assert whole["rounds"][1]["test_loss"] is None  # a NaN reading is null in the JSON
    assert whole["rounds"][0]["seconds"] == 1.5
    assert [(n["round"], n["node_id"]) for n in whole["nodes"]] == [
        (r, f"id-{i}") for r in (1, 2, 3) for i in (0, 1)
    ]
    assert whole["nodes"][2]["metrics"] == {"train_loss": None}
    page = await _get(client, "/runs/seeded-run?limit=2&offset=3")
    assert [(n["round"], n["node_id"]) for n in page["nodes"]] == [(2, "id-1"), (3, "id-0")]
    assert (page["nodes_total"], page["offset"], page["limit"]) == (6, 3, 2)
    assert page["rounds"] == whole["rounds"]


async def test_an_unknown_run_is_404_naming_it_and_a_malformed_id_is_400(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    missing = await error_of(await client.get("/runs/mnist-20260101T000000Z-abcd"), 404)
    assert "mnist-20260101T000000Z-abcd" in missing["message"]
    for bad in ("-starts-with-a-dash", "has%20space", "x" * 201):
        await error_of(await client.get(f"/runs/{bad}"), 400)
    for query in ("limit=0", f"limit={RUN_NODES_PAGE_MAX + 1}", "offset=-1"):
        error = await error_of(await client.get(f"/runs/any-run?{query}"), 400)
        assert query.split("=")[0] in error["message"]
