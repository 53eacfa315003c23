"""A node's round pipeline against a stub transport: shard caching, training, the upload's
query, its refusals, and a round given up when newer weights arrive."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
import structlog
import structlog.testing
import torch

from node.pipeline import (
    MARKS_PER_EPOCH,
    MAX_PROGRESS_PER_S,
    Assignment,
    ProgressPacer,
    RoundPipeline,
    Target,
)
from node.settings import NodeSettings
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import TrainConfig, UploadQuery, decode
from node.shared.shards import encode_xy
from node.shared.wandb_sink import WandbSink
from node.shared.weights import WeightsMeta, decode_weights, encode_weights, sha256_hex
from node.trainer import Step
from node.transport import HttpTransport, TransferError

SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)
CONFIG = TrainConfig(batch_size=4, seed=3)


class StubTransport:
    """Serves one shard and one weights file; records uploads, or refuses them with a status."""

    def __init__(self, files: dict[str, bytes], refuse: int | None = None) -> None:
        self.files = files
        self.refuse = refuse
        self.downloads: list[str] = []
        self.uploads: list[tuple[str, bytes]] = []

    async def download(self, path: str, sha256: str, into: bytearray | None = None) -> bytearray:
        self.downloads.append(path)
        assert sha256_hex(self.files[path]) == sha256
        return bytearray(self.files[path])

    async def upload_weights(self, path: str, parts: list[memoryview]) -> dict[str, Any]:
        if self.refuse is not None:
            raise TransferError(f"upload refused: {self.refuse}", self.refuse)
        self.uploads.append((path, b"".join(bytes(p) for p in parts)))
        return {"accepted": True}


def _files() -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=gen)
    y = torch.arange(12, dtype=torch.int64) % 3
    weights = encode_weights(init_state(SPEC, 1), WeightsMeta(SPEC, round=1, job_id="j"))
    return {"/shard": bytes(encode_xy(x, y)), "/weights": bytes(weights)}


def _job(files: dict[str, bytes]) -> tuple[Assignment, Target]:
    job = Assignment("j", "/shard", sha256_hex(files["/shard"]), SPEC, CONFIG, rounds=3)
    return job, Target("j", 2, "/weights", sha256_hex(files["/weights"]))


def _pipeline(tmp_path: Path, *, stale: bool = False) -> RoundPipeline:
    settings = NodeSettings(
        orchestrators=("http://x",), node_id="n1", name="n1", cache_dir=tmp_path
    )
    return RoundPipeline(
        settings,
        torch.device("cpu"),
        WandbSink(None, "fedavg", tmp_path / "wandb"),
        is_stale=lambda _target: "newer weights arrived" if stale else None,
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
