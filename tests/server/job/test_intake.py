"""Upload intake without a server: one admission check, one upload in flight per node, a
body cut when its round closes, and bodies never read for uploads refused by their query."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from node.shared.model import init_state
from node.shared.protocol import TrainConfig, UploadQuery
from node.shared.weights import WeightsMeta, encode_weights
from server.datasets import DatasetInfo
from server.errors import BadRequest, Conflict, Forbidden
from server.job.intake import unless_set
from server.job.job import Job, JobContext
from server.shard_files import ShardFile
from tests.server.job.conftest import SPEC

SHARD = 10


@pytest.fixture
async def job(tmp_path: Path, ctx: JobContext) -> AsyncIterator[Job]:
    info = DatasetInfo("d", "test", "", 20, 4, 3, (1, 4, 4), "0" * 64, "0" * 64, "now")
    shards = {n: ShardFile(n, tmp_path / f"{n}.st", "0" * 64, SHARD, SHARD) for n in "ab"}
    test_split = (torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    job = Job(
        ctx,
        job_id="run",
        dataset=info,
        shards=shards,
        spec=SPEC,
        config=TrainConfig(),
        rounds=2,
        seed=0,
        test_split=test_split,
        names={"a": "name-a", "b": "name-b"},
    )
    await job.start()
    yield job
    await job.stop("test over")


def body() -> bytearray:
    return encode_weights(init_state(SPEC, 1), WeightsMeta(spec=SPEC))


class Reader:
    """A body reader that records whether it was called, and can be held mid-body."""

    def __init__(self, data: bytearray, hold: asyncio.Event | None = None) -> None:
        self.data, self.hold, self.calls = data, hold, 0

    async def __call__(self, into: bytearray, limit: int) -> memoryview:
        self.calls += 1
        assert len(self.data) <= limit
        if self.hold is not None:
            await self.hold.wait()
        return memoryview(self.data)


@pytest.mark.parametrize(
    ("round_", "samples", "error", "reason"),
    [
        (3, 1, BadRequest, "bad_request"),  # the job has 2 rounds
        (2, 1, Conflict, "early"),
        (1, SHARD + 1, Forbidden, "bad_samples"),
    ],
)
async def test_an_upload_refused_by_its_query_is_never_read(
    job: Job, round_: int, samples: int, error: type[Exception], reason: str
) -> None:
    reader = Reader(body())
    with pytest.raises(error) as refused:
        await job.intake.receive("a", UploadQuery(None, round_, samples), None, reader)
    assert getattr(refused.value, "reason", None) == reason
    assert reader.calls == 0 and job.machine.received == {}


async def test_the_round_message_names_the_jobs_rounds(job: Job) -> None:
    with pytest.raises(BadRequest, match=r"round must be within 1\.\.2, got 3"):
        await job.intake.receive("a", UploadQuery(None, 3, 1), None, Reader(body()))


async def test_a_node_outside_the_job_is_forbidden(job: Job) -> None:
    with pytest.raises(Forbidden) as refused:
        await job.intake.receive("zed", UploadQuery(None, 1, 1), None, Reader(body()))
    assert refused.value.reason == "not_participant"


async def test_one_upload_in_flight_per_node_and_a_close_cuts_it(job: Job) -> None:
    hold = asyncio.Event()
    first = asyncio.create_task(
        job.intake.receive("a", UploadQuery(None, 1, SHARD), None, Reader(body(), hold))
    )
    await asyncio.sleep(0.05)
    with pytest.raises(Conflict) as second:
        await job.intake.receive("a", UploadQuery(None, 1, SHARD), None, Reader(body()))
    assert second.value.reason == "in_flight"
    job.intake.close_round()  # as when a deadline closes round 1 under the held body
    with pytest.raises(Conflict, match="closed during the upload") as cut:
        await first
    assert cut.value.reason == "late"


async def test_an_accepted_upload_counts_once(job: Job) -> None:
    # Nobody is expected (no node is connected), so the first upload closes round 1.
    answer = await job.intake.receive("a", UploadQuery(None, 1, SHARD), None, Reader(body()))
    assert answer == {"accepted": True, "round": 1, "received": None}
    assert job.machine.last_closed == 1
    with pytest.raises(Conflict) as late:
        await job.intake.receive("a", UploadQuery(None, 1, SHARD), None, Reader(body()))
    assert late.value.reason == "late"


async def test_unless_set_never_starts_work_once_the_event_is_set() -> None:
    started = False

    async def work() -> int:
        nonlocal started
        started = True
        return 1

    event = asyncio.Event()
    assert await unless_set(work(), event, RuntimeError("cut")) == 1
    event.set()
    started = False
    with pytest.raises(RuntimeError, match="cut"):
        await unless_set(work(), event, RuntimeError("cut"))
    assert not started
