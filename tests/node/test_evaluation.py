"""Evaluation where the data is: evaluate requests answered with exact counts or refused
with a reason, and a reading that waits for room in a full outbox rather than being dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
import structlog.testing
import torch

from node.evaluation import MAX_PENDING, LocalEvaluator
from node.local_datasets import NodeDataset
from node.shared.evaluate import evaluate
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import Evaluate, Evaluation, decode_as
from node.shared.wandb_sink import WandbSink
from node.shared.weights import WeightsMeta, encode_weights, sha256_hex
from node.transport import HttpTransport
from tests.node.stand_ins import StubTransport, own_dataset, right_answers

SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)
OTHER = ModelSpec(input_shape=(1, 4, 4), hidden=(7,), dropout=(), num_classes=3)


def _evaluator(tmp_path: Path, own: NodeDataset) -> LocalEvaluator:
    return LocalEvaluator({own.name: own}, WandbSink(None, "fedavg", tmp_path), node_id="n1")


def _weights(spec: ModelSpec = SPEC, seed: int = 7) -> bytes:
    return bytes(encode_weights(init_state(spec, seed), WeightsMeta(spec, round=4, job_id="j")))


def _request(files: dict[str, bytes], path: str, **fields: object) -> Evaluate:
    sha = sha256_hex(files[path]) if path in files else "00" * 32
    frame = {"job_id": "eval-1", "dataset": "own", "round": 0, "model_spec": SPEC}
    return Evaluate(**{**frame, **fields}, weights_url=path, weights_sha256=sha)  # type: ignore[arg-type]


async def test_a_request_is_answered_with_the_counts_of_its_weights_on_the_test_split(
    tmp_path: Path,
) -> None:
    own = own_dataset(tmp_path)
    files = {"/models/m.safetensors": _weights()}
    evaluator = _evaluator(tmp_path, own)
    evaluator.request(_request(files, "/models/m.safetensors", round=4))
    outbox: asyncio.Queue[str] = asyncio.Queue(4)

    await evaluator.answer_next(cast(HttpTransport, StubTransport(files)), outbox)

    answer = decode_as(outbox.get_nowait(), Evaluation)
    state = init_state(SPEC, 7)
    _, loss = evaluate(state, SPEC, own.test_x, own.test_y)
    assert (answer.job_id, answer.round, answer.samples) == ("eval-1", 4, len(own.test_y))
    assert answer.correct == right_answers(state, SPEC, own.test_x, own.test_y)
    assert answer.loss == pytest.approx(loss)
    assert not evaluator.pending and outbox.empty()


@pytest.mark.parametrize(
    ("path", "fields", "reason"),
    [
        ("/m", {"dataset": "pets"}, "this node holds no dataset 'pets'"),
        (
            "/m",
            {
                "model_spec": ModelSpec(
                    input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=4
                )
            },
            "num_classes: the model has 4 outputs, the data has 3 classes",
        ),
        ("/m", {"model_spec": ModelSpec()}, "input_shape: the model takes [1, 28, 28]"),
        ("/other", {}, "the weights' model spec is not the one the request names"),
        ("/gone", {}, "the weights could not be read: GET /gone: 404"),
    ],
)
async def test_a_request_that_cannot_be_answered_is_logged_not_raised(
    tmp_path: Path, path: str, fields: dict[str, object], reason: str
) -> None:
    files = {"/m": _weights(), "/other": _weights(OTHER)}
    evaluator = _evaluator(tmp_path, own_dataset(tmp_path))
    evaluator.request(_request(files, path, **fields))
    outbox: asyncio.Queue[str] = asyncio.Queue(4)
    with structlog.testing.capture_logs() as logs:
        await evaluator.answer_next(cast(HttpTransport, StubTransport(files)), outbox)
    assert outbox.empty() and not evaluator.pending
    (refused,) = [e for e in logs if e["event"] == "evaluation_refused"]
    assert refused["reason"].startswith(reason) and refused["job_id"] == "eval-1"


def test_requests_beyond_the_bound_drop_the_oldest(tmp_path: Path) -> None:
    evaluator = _evaluator(tmp_path, own_dataset(tmp_path))
    with structlog.testing.capture_logs() as logs:
        for round_ in range(MAX_PENDING + 2):
            evaluator.request(_request({}, "/m", round=round_))
    assert [e["round"] for e in logs if e["event"] == "evaluation_dropped"] == [0, 1]
    evaluator.forget_requests()  # the connection ended
    assert not evaluator.pending


class WatchedOutbox(asyncio.Queue[str]):
    """An outbox of one frame that says when a sender waits for room in it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.waited = asyncio.Event()

    async def put(self, item: str) -> None:
        if self.full():
            self.waited.set()
        await super().put(item)


async def test_a_reading_waits_for_room_in_a_full_outbox(tmp_path: Path) -> None:
    own = own_dataset(tmp_path)
    evaluator = _evaluator(tmp_path, own)
    outbox = WatchedOutbox()
    outbox.put_nowait("a progress frame nobody has sent yet")
    state = init_state(SPEC, 7)
    reading = asyncio.create_task(evaluator.before_round(outbox, "j", 1, SPEC, "own", state))
    waiting = asyncio.create_task(outbox.waited.wait())
    await asyncio.wait([reading, waiting], return_when=asyncio.FIRST_COMPLETED)

    assert outbox.waited.is_set() and not reading.done()  # not dropped: waiting for room
    assert outbox.get_nowait() == "a progress frame nobody has sent yet"
    await reading
    assert decode_as(outbox.get_nowait(), Evaluation).round == 1


async def test_each_round_of_a_job_is_read_once(tmp_path: Path) -> None:
    own = own_dataset(tmp_path)
    evaluator = _evaluator(tmp_path, own)
    outbox: asyncio.Queue[str] = asyncio.Queue(8)
    state: dict[str, torch.Tensor] = init_state(SPEC, 7)
    for job, round_ in [("j", 0), ("j", 1), ("j", 0), ("j", 1), ("k", 0)]:
        await evaluator.before_round(outbox, job, round_, SPEC, "own", state)
    sent = [decode_as(outbox.get_nowait(), Evaluation) for _ in range(outbox.qsize())]
    assert [(e.job_id, e.round) for e in sent] == [("j", 0), ("j", 1), ("k", 0)]
