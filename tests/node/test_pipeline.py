"""A node's round pipeline against a stub transport: shard caching, training, the upload's
query, its refusals, a round given up when newer weights arrive, and a round over the node's
own data (evaluated before it is trained on)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import cast
from urllib.parse import parse_qsl, urlsplit

import pytest
import structlog
import structlog.testing
import torch

from node.local_datasets import NodeDataset
from node.pipeline import (
    MARKS_PER_EPOCH,
    MAX_PROGRESS_PER_S,
    Assignment,
    ProgressPacer,
    RoundPipeline,
    Target,
)
from node.settings import NodeSettings
from node.shared.evaluate import evaluate
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import Evaluation, TrainConfig, UploadQuery, decode, decode_as
from node.shared.shards import encode_xy
from node.shared.wandb_sink import WandbSink
from node.shared.weights import WeightsMeta, decode_weights, encode_weights, sha256_hex
from node.trainer import Step
from node.transport import HttpTransport, TransferError
from tests.node.stand_ins import StubTransport, own_dataset, right_answers

SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)
CONFIG = TrainConfig(batch_size=4, seed=3)


def _files() -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=gen)
    y = torch.arange(12, dtype=torch.int64) % 3
    weights = encode_weights(init_state(SPEC, 1), WeightsMeta(SPEC, round=1, job_id="j"))
    return {"/shard": bytes(encode_xy(x, y)), "/weights": bytes(weights)}


def _job(files: dict[str, bytes]) -> tuple[Assignment, Target]:
    job = Assignment("j", "/shard", sha256_hex(files["/shard"]), SPEC, CONFIG, rounds=3)
    return job, Target("j", 2, "/weights", sha256_hex(files["/weights"]))


def _pipeline(
    tmp_path: Path,
    *,
    stale: bool = False,
    own: NodeDataset | None = None,
    wandb: WandbSink | None = None,
) -> RoundPipeline:
    settings = NodeSettings(
        orchestrators=("http://x",), node_id="n1", name="n1", cache_dir=tmp_path
    )
    return RoundPipeline(
        settings,
        torch.device("cpu"),
        wandb or WandbSink(None, "fedavg", tmp_path / "wandb"),
        is_stale=lambda _target: "newer weights arrived" if stale else None,
        datasets=None if own is None else {own.name: own},
    )


async def _run(pipeline: RoundPipeline, transport: StubTransport) -> tuple[bool, list[str]]:
    outbox: asyncio.Queue[str] = asyncio.Queue(64)
    job, target = _job(transport.files)
    trained = await pipeline.run(cast(HttpTransport, transport), outbox, job, target)
    await asyncio.sleep(0)  # progress frames are offered through the loop
    return trained, [outbox.get_nowait() for _ in range(outbox.qsize())]


async def test_a_round_trains_and_uploads_with_its_query(tmp_path: Path) -> None:
    transport = StubTransport(_files())
    pipeline = _pipeline(tmp_path)

    trained, frames = await _run(pipeline, transport)

    assert trained and pipeline.rounds_trained == 1
    ((path, body),) = transport.uploads
    url = urlsplit(path)
    assert url.path == "/sync/weights"
    query = UploadQuery.decode(dict(parse_qsl(url.query)))
    assert (query.job_id, query.round, query.samples) == ("j", 2, 11)  # one held out
    assert set(query.metrics) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} | {
        "seconds"
    }
    _, meta = decode_weights(body)
    assert (meta.spec, meta.round, meta.job_id) == (SPEC, 2, "j")
    assert frames and decode(frames[-1]).type == "progress"


async def test_the_shard_is_kept_in_memory_then_read_from_the_disk_cache(tmp_path: Path) -> None:
    files = _files()
    first = StubTransport(files)
    pipeline = _pipeline(tmp_path)
    await _run(pipeline, first)
    await _run(pipeline, first)
    assert first.downloads == ["/shard", "/weights", "/weights"]

    again = StubTransport(files)
    await _run(_pipeline(tmp_path), again)  # a new process: the shard is on disk
    assert again.downloads == ["/weights"]


async def test_a_refused_upload_is_logged_and_a_server_failure_raised(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    trained, _ = await _run(pipeline, StubTransport(_files(), refuse=409))
    assert trained and pipeline.rounds_trained == 0
    with pytest.raises(TransferError):
        await _run(pipeline, StubTransport(_files(), refuse=503))


async def test_a_stale_round_is_abandoned_without_an_upload(tmp_path: Path) -> None:
    transport = StubTransport(_files())
    with structlog.testing.capture_logs() as logs:
        trained, _ = await _run(_pipeline(tmp_path, stale=True), transport)
    assert not trained and transport.uploads == []
    (abandoned,) = [e for e in logs if e["event"] == "round_abandoned"]
    assert abandoned["reason"] == "newer weights arrived"  # the agent's word for why


def _paced(
    pacer: ProgressPacer, epochs: int, batches: int, step_s: float
) -> list[tuple[float, Step]]:
    """The steps ``pacer`` lets out of a round of ``epochs`` x ``batches`` steps of ``step_s``."""
    sent = []
    for k in range(epochs * batches):
        step = Step(k % batches + 1, batches, k // batches + 1, epochs, loss=1.0)
        now = k * step_s
        if pacer.due(step, now):
            sent.append((now, step))
    return sent


def test_progress_in_a_long_epoch_goes_out_every_interval() -> None:
    sent = _paced(ProgressPacer(interval_s=0.25), epochs=1, batches=1000, step_s=0.01)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
    assert sent[0][1].batch == 1
    assert max(gaps) <= 0.25 + 0.01  # the bar moves at least every interval
    assert min(gaps) >= 1 / MAX_PROGRESS_PER_S - 1e-9


def test_a_short_epoch_still_shows_each_quarter() -> None:
    # A 0.48 s round: the interval alone would show the bar at its start and half-way.
    sent = _paced(ProgressPacer(interval_s=0.25), epochs=1, batches=40, step_s=0.012)
    assert {MARKS_PER_EPOCH * s.batch // s.batches for _, s in sent} >= {0, 1, 2, 3}


def test_every_one_of_several_short_epochs_is_named() -> None:
    sent = _paced(ProgressPacer(interval_s=0.25), epochs=5, batches=10, step_s=0.012)
    assert {s.epoch for _, s in sent} == {1, 2, 3, 4, 5}
    assert all(s.epochs == 5 for _, s in sent)


@pytest.mark.parametrize("step_s", [0.0, 0.0005, 0.003])
def test_progress_never_goes_out_faster_than_its_cap(step_s: float) -> None:
    """However short the steps (0: a burst of them at one instant), a node stays under
    MAX_PROGRESS_PER_S, far below the server's frame budget."""
    pacer = ProgressPacer(interval_s=0.0)  # asks for every step
    sent = _paced(pacer, epochs=50, batches=40, step_s=step_s)
    duration = 50 * 40 * step_s
    assert len(sent) <= duration * MAX_PROGRESS_PER_S + 1


class RecordedSink(WandbSink):
    """W&B as the node sees it, with what it is given kept in a list."""

    def __init__(self, folder: Path) -> None:
        super().__init__(None, "fedavg", folder)
        self.logged: list[tuple[dict[str, float], int]] = []

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.logged.append((dict(values), step))


def _local_job(
    own: NodeDataset, files: dict[str, bytes], round_: int = 2
) -> tuple[Assignment, Target]:
    job = Assignment(
        "j", "", own.fingerprint, SPEC, CONFIG, rounds=3, data_mode="local", dataset=own.name
    )
    return job, Target("j", round_, "/weights", sha256_hex(files["/weights"]))


async def _run_local(
    pipeline: RoundPipeline, transport: StubTransport, own: NodeDataset, round_: int = 2
) -> list[str]:
    outbox: asyncio.Queue[str] = asyncio.Queue(64)
    job, target = _local_job(own, transport.files, round_)
    assert await pipeline.run(cast(HttpTransport, transport), outbox, job, target)
    await asyncio.sleep(0)  # progress frames are offered through the loop
    return [outbox.get_nowait() for _ in range(outbox.qsize())]


async def test_a_local_round_reads_the_global_model_then_trains_on_the_own_data(
    tmp_path: Path,
) -> None:
    own = own_dataset(tmp_path)
    files = {"/weights": _files()["/weights"]}  # no shard: the samples are the node's
    transport, wandb = StubTransport(files), RecordedSink(tmp_path / "wandb")
    with structlog.testing.capture_logs() as logs:
        frames = await _run_local(_pipeline(tmp_path, own=own, wandb=wandb), transport, own)

    assert transport.downloads == ["/weights"]
    first, *rest = (decode(f) for f in frames)
    assert isinstance(first, Evaluation) and rest and {f.type for f in rest} == {"progress"}
    global_state, _ = decode_weights(files["/weights"])
    accuracy, loss = evaluate(global_state, SPEC, own.test_x, own.test_y)
    assert (first.job_id, first.round, first.samples) == ("j", 1, len(own.test_y))
    assert first.correct == right_answers(global_state, SPEC, own.test_x, own.test_y)
    assert first.loss == pytest.approx(loss)
    ((path, _),) = transport.uploads
    query = UploadQuery.decode(dict(parse_qsl(urlsplit(path).query)))
    held_out = int(len(own.train_y) * 0.1)  # NodeSettings' validation_split
    assert query.samples == len(own.train_y) - held_out < own.announcement().train_samples
    (read,) = [e for e in logs if e["event"] == "local_evaluation"]
    assert (read["round"], read["samples"], read["accuracy"]) == (1, len(own.test_y), accuracy)
    assert ({"local/test_accuracy": accuracy, "local/test_loss": loss}, 1) in wandb.logged


async def test_a_round_sent_again_is_not_read_again(tmp_path: Path) -> None:
    own = own_dataset(tmp_path)
    transport = StubTransport({"/weights": _files()["/weights"]})
    pipeline = _pipeline(tmp_path, own=own)
    rounds = []
    for round_ in (2, 2, 3):  # round 2 again, as a rejoin sends it
        frames = await _run_local(pipeline, transport, own, round_)
        rounds += [decode_as(f, Evaluation).round for f in frames if decode(f).type == "evaluation"]
    assert rounds == [1, 2]
    assert len(transport.uploads) == 3  # each round is still trained


async def test_a_shard_round_sends_no_evaluation(tmp_path: Path) -> None:
    own = own_dataset(tmp_path)  # held, but the job is over the server's shard
    _, frames = await _run(_pipeline(tmp_path, own=own), StubTransport(_files()))
    assert {decode(f).type for f in frames} == {"progress"}


async def test_a_job_that_keeps_the_optimizer_state_carries_it_to_its_next_round(
    tmp_path: Path,
) -> None:
    files, pipeline = _files(), _pipeline(tmp_path)
    transport = StubTransport(files)
    keep = dataclasses.replace(CONFIG, keep_optimizer_state=True)
    job, target = _job(files)
    job = dataclasses.replace(job, config=keep)
    outbox: asyncio.Queue[str] = asyncio.Queue(64)
    run = functools.partial(pipeline.run, cast(HttpTransport, transport), outbox)

    def steps() -> set[float]:
        assert pipeline._optimizer_state is not None
        return {float(s["step"]) for s in pipeline._optimizer_state[1]["state"].values()}

    assert await run(job, target)
    assert steps() == {3.0}  # 11 samples, batch 4
    assert await run(job, dataclasses.replace(target, round=3))
    assert steps() == {6.0}  # went on from the last round's moments
    other = dataclasses.replace(job, job_id="k")
    assert await run(other, dataclasses.replace(target, job_id="k"))
    assert steps() == {3.0}  # another job starts afresh
    assert await run(
        dataclasses.replace(other, config=CONFIG), dataclasses.replace(target, job_id="k")
    )
    assert pipeline._optimizer_state is None  # a job that does not keep it drops it
