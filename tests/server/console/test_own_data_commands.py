"""``fedavg evaluate`` and ``fedavg train --mode`` against the real app on a real socket.

The orchestrator is ``create_app`` served by pytest-aiohttp; its nodes are hand-made
(``tests.server.web.conftest.FakeNode``) and announce data of their own, so a test decides
every reading they send. The command runs as the user runs it (``server.console.main.run``),
in a thread with its own event loop, while the test answers for the nodes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer
from structlog.testing import capture_logs

from node.shared.model import init_state
from node.shared.protocol import (
    Evaluate,
    Evaluation,
    OwnData,
    OwnDataset,
    Train,
    WeightsReady,
    encode,
)
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from server.console.main import run
from server.console.views import LOCAL_ROUND_HEADER
from server.demo.local_cluster import free_port
from server.settings import Settings
from server.web.app import create_app
from tests.server.web.conftest import SPEC, Client, FakeNode, connect

TOKEN = "t" * 32
TEST = {"a": 60, "b": 20, "d": 10}  # each node's announced test samples
MODEL = "digits-model.safetensors"


def _digits(node_id: str, shape: tuple[int, ...]) -> OwnDataset:
    return OwnDataset(
        name="digits",
        input_shape=shape,
        class_names=tuple(str(c) for c in range(10)),
        train_samples=100,
        test_samples=TEST.get(node_id, 10),
        fingerprint=node_id[0] * 64,
    )


async def _holder(client: Client, node_id: str, shape: tuple[int, ...] = (1, 28, 28)) -> FakeNode:
    node = await connect(client, node_id)
    await node.ws.send_str(encode(OwnData(datasets=(_digits(node_id, shape),))))
    for _ in range(200):  # the frame is applied asynchronously
        rows = (await (await client.get("/nodes")).json())["nodes"]
        if any(r["node_id"] == node_id and r["own_data"] for r in rows):
            return node
        await asyncio.sleep(0.02)
    raise AssertionError(f"{node_id}'s own_data never showed")


@pytest.fixture
async def orchestrator(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, tmp_path: Path
) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    """The real app with a saved model that fits "digits"; a client for the nodes, and the
    environment the command reads (its URL and admin token)."""
    settings = Settings(
        home=tmp_path,
        mnist_download=False,
        model_spec=SPEC,
        heartbeat_s=30.0,
        admin_token=TOKEN,
    )
    settings.models_path.mkdir(parents=True, exist_ok=True)
    model = encode_weights(init_state(SPEC, seed=1), WeightsMeta(spec=SPEC, job_id="earlier"))
    (settings.models_path / MODEL).write_bytes(model)
    with capture_logs():  # the server's log lines stay out of the command's captured stdout
        server = await aiohttp_server(create_app(settings))
        env = {"ORCHESTRATOR_URL": str(server.make_url("/")), "FEDAVG_ADMIN_TOKEN": TOKEN}
        yield await aiohttp_client(server), env


def _fedavg(argv: list[str], env: dict[str, str]) -> asyncio.Future[int]:
    """The command, running in a thread while the test's loop answers for the nodes."""
    return asyncio.ensure_future(asyncio.to_thread(run, argv, env))


async def _answer(node: FakeNode, correct: int) -> None:
    asked = await node.expect(Evaluate)
    assert (asked.dataset, asked.weights_url) == ("digits", f"/models/{MODEL}")
    reading = Evaluation(
        job_id=asked.job_id, round=0, samples=TEST[node.node_id], correct=correct, loss=0.4
    )
    await node.ws.send_str(encode(reading))


async def test_evaluate_prints_each_nodes_reading_and_the_weighted_mean(
    orchestrator: tuple[Client, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, env = orchestrator
    a, b, d = [await _holder(client, n) for n in "abd"]
    await _holder(client, "c", shape=(3, 28, 28))  # not the majority's schema: left out
    command = _fedavg(["evaluate", "digits", "--model", MODEL, "--json"], env)
    await _answer(a, correct=51)
    await _answer(b, correct=11)
    await d.expect(Evaluate)
    await d.ws.close()  # it leaves without answering
    assert await command == 0
    answer: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert [(n["name"], n["correct"], n["samples"]) for n in answer["nodes"]] == [
        ("name-a", 51, 60),
        ("name-b", 11, 20),
    ]
    assert answer["weighted"]["accuracy"] == 62 / 80 and answer["missing"] == ["name-d"]
    assert [n["node_id"] for n in answer["left_out"]] == ["c"]

    command = _fedavg(["evaluate", "digits", "--model", MODEL], env)  # the table
    await _answer(a, correct=30)
    await _answer(b, correct=10)
    assert await command == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in row.split("│")[1:-1]] for row in rows]
    assert cells == [
        ["name-a", "60", "30", "0.5000", "0.4000"],
        ["name-b", "20", "10", "0.5000", "0.4000"],
        ["weighted mean (2 nodes)", "80", "40", "0.5000", "0.4000"],
    ]


async def test_evaluate_exits_4_with_the_servers_message_and_3_when_unreachable(
    orchestrator: tuple[Client, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, env = orchestrator
    await _holder(client, "a")
    assert await _fedavg(["evaluate", "digits", "--model", "nope.safetensors"], env) == 4
    assert "no model named 'nope.safetensors'" in capsys.readouterr().err
    no_token = {"ORCHESTRATOR_URL": env["ORCHESTRATOR_URL"]}
    assert await _fedavg(["evaluate", "digits", "--model", MODEL], no_token) == 4
    assert "set FEDAVG_ADMIN_TOKEN" in capsys.readouterr().err
    assert await _fedavg(["evaluate", "scans", "--model", MODEL], env) == 4
    assert "no connected node holds a dataset named 'scans'" in capsys.readouterr().err
    gone = {**env, "ORCHESTRATOR_URL": f"http://127.0.0.1:{free_port()}"}
    assert await _fedavg(["evaluate", "digits", "--model", MODEL], gone) == 3
    assert "cannot reach" in capsys.readouterr().err


async def test_train_passes_the_data_mode_and_says_who_was_left_out(
    orchestrator: tuple[Client, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, env = orchestrator
    a = await _holder(client, "a")
    await _holder(client, "c", shape=(3, 28, 28))
    assert await _fedavg(["train", "digits", "--mode", "shards", "--detach"], env) == 4
    assert "digits" in capsys.readouterr().err  # the server has no prepared dataset of it
    command = _fedavg(["train", "digits", "--mode", "local", "--rounds", "1", "--detach"], env)
    assert await command == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("job digits-") and "data local: the nodes' own, never sent)" in line
    assert line.endswith(
        "; left out: name-c (input_shape [3, 28, 28], not the majority's [1, 28, 28])"
    )
    train = await a.expect(Train)
    assert (train.data_mode, train.dataset, train.shard_url) == ("local", "digits", "")


async def _evaluated(
    client: Client, node: FakeNode, train: Train, round_: int, correct: int
) -> None:
    """``node``'s reading of round ``round_``'s model, once the server has counted it."""
    reading = Evaluation(
        job_id=train.job_id, round=round_, samples=TEST[node.node_id], correct=correct, loss=0.5
    )
    await node.ws.send_str(encode(reading))
    for _ in range(200):  # the frame is applied asynchronously
        views = (await (await client.get("/monitor/nodes")).json())["nodes"]
        if any(
            (v["evaluation"] or {}).get("round") == round_
            for v in views
            if v["node_id"] == node.node_id
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{node.node_id}'s reading of round {round_} never showed")


async def _upload(client: Client, node: FakeNode, train: Train, round_: int, start: bytes) -> None:
    state, _ = decode_weights(start)
    body = encode_weights(
        state, WeightsMeta(spec=train.model_spec, round=round_, job_id=train.job_id)
    )
    params = {"job": train.job_id, "round": str(round_), "samples": "50"}
    resp = await client.post("/sync/weights", params=params, data=body, headers=node.auth)
    assert resp.status == 200, await resp.text()


async def test_train_follows_a_local_job_with_the_federated_accuracy_of_each_round(
    orchestrator: tuple[Client, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, env = orchestrator
    a, b = await _holder(client, "a"), await _holder(client, "b")
    command = _fedavg(["train", "digits", "--mode", "local", "--rounds", "2"], env)
    trains = [await a.expect(Train), await b.expect(Train)]
    start = await (await client.get(trains[0].weights_url)).read()
    correct = {0: {"a": 6, "b": 2}, 1: {"a": 30, "b": 10}, 2: {"a": 54, "b": 11}}
    for round_ in (1, 2):  # each node reads the model it got, then trains on it
        for node, train in zip((a, b), trains, strict=True):
            await _evaluated(client, node, train, round_ - 1, correct[round_ - 1][node.node_id])
            await _upload(client, node, train, round_, start)
        if round_ == 1:
            for node in (a, b):
                await node.expect(WeightsReady)
    for node, train in zip((a, b), trains, strict=True):
        asked = await node.expect(Evaluate)  # the final model, read before it is written
        assert asked.round == 2
        await _evaluated(client, node, train, 2, correct[2][node.node_id])
    assert await command == 0
    out = capsys.readouterr().out.splitlines()
    header = out.index(LOCAL_ROUND_HEADER)
    rounds = [line.split() for line in out[header + 1 : header + 3]]
    # No server test split; each round's model as the nodes read it: 40, then 65 of 80.
    assert [r[:5] for r in rounds] == [
        ["1", "2", "-", "-", "0.5000"],
        ["2", "2", "-", "-", "0.8125"],
    ]
    assert "completed after round 2 of 2; final accuracy 0.8125" in out[-1]
