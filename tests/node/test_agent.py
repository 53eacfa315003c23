"""The agent's frames: why a round in training is given up, a job over the node's own data
taken or refused, and evaluate requests answered by its work loop before any round."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
import structlog.testing
import torch

from node.agent import Agent
from node.local_datasets import NodeDataset
from node.settings import NodeSettings
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import (
    Done,
    Evaluate,
    Evaluation,
    Train,
    TrainConfig,
    UploadQuery,
    WeightsReady,
    decode,
    decode_as,
)
from node.shared.weights import WeightsMeta, encode_weights, sha256_hex
from node.transport import HttpTransport
from tests.node.stand_ins import StubTransport, own_dataset, right_answers


def _agent(tmp_path: Path, own: NodeDataset | None = None) -> Agent:
    settings = NodeSettings(
        orchestrators=("http://x",), node_id="n1", name="n1", cache_dir=tmp_path
    )
    datasets = None if own is None else {own.name: own}
    return Agent(settings, 10.0, torch.device("cpu"), secret="s" * 16, datasets=datasets)


def _train() -> Train:
    return Train(
        job_id="j",
        dataset="mnist",
        shard_url="/shards/j/n1",
        shard_sha256="ab" * 32,
        model_spec=ModelSpec(hidden=(8,), dropout=()),
        config=TrainConfig(),
        rounds=3,
        round=2,
        weights_url="/sync/weights?job=j&round=1",
        weights_sha256="cd" * 32,
    )


async def test_a_round_is_stale_for_the_reason_that_ended_it(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent._handle(_train())
    training = agent.target
    assert training is not None and agent._stale(training) is None
    agent._handle(WeightsReady(job_id="j", round=2, url="/w", sha256="ef" * 32))
    assert agent._stale(training) == "newer weights arrived"

    newer = agent.target
    assert newer is not None
    agent._handle(Done(job_id="j", model_url="", status="stopped"))
    assert agent._stale(newer) == "the job ended"  # what a stop looks like to the node

    agent._handle(_train())
    again = agent.target
    assert again is not None
    agent.target = None  # what the end of a connection does
    assert agent._stale(again) == "the connection closed"
    agent.stop()
    assert agent._stale(again) == "the node is stopping"


SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)


def _local_train(own: NodeDataset, weights: bytes, **fields: Any) -> Train:
    frame: dict[str, Any] = {
        "job_id": "j",
        "dataset": own.name,
        "shard_url": "",
        "shard_sha256": own.fingerprint,
        "model_spec": SPEC,
        "config": TrainConfig(batch_size=4, seed=3),
        "rounds": 3,
        "round": 1,
        "weights_url": "/sync/weights?job=j&round=0",
        "weights_sha256": sha256_hex(weights),
        "data_mode": "local",
    }
    return Train(**{**frame, **fields})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dataset": "pets"}, "this node holds no dataset 'pets' (it holds ['own'])"),
        ({"shard_sha256": "ab" * 32}, "dataset 'own' has fingerprint"),
        ({"model_spec": ModelSpec()}, "input_shape: the model takes [1, 28, 28]"),
        (
            {
                "model_spec": ModelSpec(
                    input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=10
                )
            },
            "num_classes: the model has 10 outputs, the data has 3 classes",
        ),
    ],
)
def test_a_local_job_the_node_cannot_train_is_refused_with_why(
    tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:
    own = own_dataset(tmp_path)
    agent = _agent(tmp_path, own)
    with structlog.testing.capture_logs() as logs:
        agent._handle(_local_train(own, b"w", **fields))
    assert agent.assignment is None and agent.target is None  # nothing to train
    (refused,) = [e for e in logs if e["event"] == "local_data_mismatch"]
    assert refused["reason"].startswith(reason) and refused["job_id"] == "j"


async def _work_until(
    agent: Agent, transport: StubTransport, outbox: asyncio.Queue[str], done: Callable[[], bool]
) -> None:
    """Run the agent's work loop until ``done()`` (or until it fails)."""
    work = asyncio.create_task(agent._work(cast(HttpTransport, transport), outbox))
    try:
        while not done():
            await asyncio.wait([work], timeout=0.01)
            if work.done():
                work.result()  # raises what ended it
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


async def test_an_evaluate_request_is_answered_first_then_the_local_round_read_and_trained(
    tmp_path: Path,
) -> None:
    own = own_dataset(tmp_path)
    start = bytes(encode_weights(init_state(SPEC, 1), WeightsMeta(SPEC, round=0, job_id="j")))
    saved = bytes(encode_weights(init_state(SPEC, 2), WeightsMeta(SPEC, round=9, job_id="x")))
    transport = StubTransport({"/sync/weights?job=j&round=0": start, "/models/m": saved})
    agent = _agent(tmp_path, own)
    agent._handle(_local_train(own, start))
    assert agent.assignment is not None and agent.assignment.data_mode == "local"
    agent._handle(Evaluate("eval-1", "own", 0, SPEC, "/models/m", sha256_hex(saved)))
    outbox: asyncio.Queue[str] = asyncio.Queue(64)

    await _work_until(agent, transport, outbox, lambda: bool(transport.uploads))

    frames = [decode(outbox.get_nowait()) for _ in range(outbox.qsize())]
    readings = [f for f in frames if isinstance(f, Evaluation)]
    assert frames[:2] == readings  # both before any progress of the round
    saved_state, start_state = init_state(SPEC, 2), init_state(SPEC, 1)
    test_x, test_y = own.test_x, own.test_y
    assert readings == [
        Evaluation(
            "eval-1",
            0,
            len(test_y),
            right_answers(saved_state, SPEC, test_x, test_y),
            readings[0].loss,
        ),
        Evaluation(
            "j", 0, len(test_y), right_answers(start_state, SPEC, test_x, test_y), readings[1].loss
        ),
    ]
    assert transport.downloads == ["/models/m", "/sync/weights?job=j&round=0"]
    ((path, _),) = transport.uploads
    samples = UploadQuery.decode(dict(parse_qsl(urlsplit(path).query))).samples
    assert samples <= own.announcement().train_samples


async def test_an_evaluate_request_for_data_the_node_lacks_leaves_the_loop_working(
    tmp_path: Path,
) -> None:
    own = own_dataset(tmp_path)
    saved = bytes(encode_weights(init_state(SPEC, 2), WeightsMeta(SPEC, round=9, job_id="x")))
    transport = StubTransport({"/models/m": saved})
    agent = _agent(tmp_path, own)  # and no job at all
    agent._handle(Evaluate("eval-1", "pets", 0, SPEC, "/models/m", sha256_hex(saved)))
    agent._handle(Evaluate("eval-1", "own", 0, SPEC, "/models/m", sha256_hex(saved)))
    outbox: asyncio.Queue[str] = asyncio.Queue(4)
    with structlog.testing.capture_logs() as logs:
        await _work_until(agent, transport, outbox, lambda: not outbox.empty())
    assert decode_as(outbox.get_nowait(), Evaluation).samples == len(own.test_y)
    assert [e["dataset"] for e in logs if e["event"] == "evaluation_refused"] == ["pets"]


async def test_a_node_that_exits_after_its_job_first_answers_the_final_evaluation(
    tmp_path: Path,
) -> None:
    own = own_dataset(tmp_path)
    final = bytes(encode_weights(init_state(SPEC, 3), WeightsMeta(SPEC, round=3, job_id="j")))
    agent = _agent(tmp_path, own)
    agent.settings = dataclasses.replace(agent.settings, exit_after_job=True)
    agent._handle(Evaluate("j", "own", 3, SPEC, "/final", sha256_hex(final)))
    agent._handle(Done(job_id="j", model_url="/models/j.safetensors"))  # right behind it
    assert not agent._stopping.is_set()
    outbox: asyncio.Queue[str] = asyncio.Queue(4)

    await _work_until(agent, StubTransport({"/final": final}), outbox, agent._stopping.is_set)

    assert decode_as(outbox.get_nowait(), Evaluation).round == 3
