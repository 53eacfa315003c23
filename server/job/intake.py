"""Upload intake: one job's uploads, from their query to the fold, bounded in number, memory
and time.

An upload is refused from its query alone when it can be. A node has one upload in flight
at most; a few are read at once (the upload slots) into warm pooled buffers; a body still
being read when its round closes is cut; a read body is decoded as views of its buffer and
folded into the strategy at once, under the job's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from prometheus_async.aio import time as aio_time

from node.shared.errors import WeightsError
from node.shared.protocol import UploadQuery
from node.shared.weights import (
    MAX_HEADER_BYTES,
    Layout,
    all_finite,
    decode_tensors,
    layout_bytes,
)
from server import failpoints
from server.core.aggregation import AggregationError, Strategy, UpdateBound, make_strategy
from server.core.rounds import RoundClosed, RoundMachine, Verdict
from server.core.server_opt import NoServerOptimizer, StepRefused, server_optimizer_from_config
from server.errors import BadRequest, Conflict, Forbidden
from server.job.buffers import BufferPool
from server.job.checkpoints import Checkpoint
from server.job.context import JobContext
from server.job.participants import Participants

T = TypeVar("T")

BodyReader = Callable[[bytearray, int], Awaitable[memoryview]]
"""Reads an upload's body into the given buffer (or a fresh one when it is too short) and
returns a view of exactly the body, refusing one over the given number of bytes."""


class Intake:
    """One job's uploads: admission, one in flight per node, slots, buffers, the fold."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        job_id: str,
        machine: RoundMachine,
        lock: asyncio.Lock,
        checkpoints: Mapping[int, Checkpoint],
        participants: Participants,
        layout: Layout,
        wire_layout: Layout,
        close_round: Callable[[RoundClosed], Awaitable[None]],
    ) -> None:
        self._ctx = ctx
        self._job_id = job_id
        self._machine = machine
        self._lock = lock  # the job's: a fold and a deadline never close the same round twice
        self._checkpoints = checkpoints  # the job's, live: a late upload is told the newest
        self._participants = participants
        self._close_round = close_round
        # An honest upload is the model's tensors plus a small header: anything bigger is
        # refused before it is read, whatever the operator's FEDAVG_MAX_UPLOAD_MB allows.
        self.max_bytes = min(ctx.max_upload_bytes, 8 + MAX_HEADER_BYTES + layout_bytes(wire_layout))
        # One per job, reset per round; dropped with the job's other big buffers at its end.
        self._strategy: Strategy | None = make_strategy(ctx.aggregation, layout)
        # Steps after the combine; none is FedAvg, the combined update as it is.
        self._optimizer = server_optimizer_from_config(ctx.server_opt, layout)
        self._stepped: dict[str, torch.Tensor] | None = None  # the last step's float32 result
        self._slots = asyncio.Semaphore(ctx.upload_slots)
        self._buffers = BufferPool(keep=ctx.upload_slots)
        self._reading: set[str] = set()  # nodes with an upload body being read
        self._round_over = asyncio.Event()  # set when the open round closes (cuts its uploads)
        self._ended: str | None = None  # the job's final status, once it has one

    @property
    def strategy(self) -> Strategy:
        if self._strategy is None:  # an upload that raced the job's end (a stop, say)
            raise Conflict(f"job {self._job_id} is finished", reason="finished")
        return self._strategy

    def average_into(
        self,
        fallback: Mapping[str, torch.Tensor] | None,
        refused: list[bool],
        out: Mapping[str, torch.Tensor],
    ) -> Mapping[str, torch.Tensor] | None:
        """The round's aggregate into ``out``, stepped by the server optimizer from
        ``fallback`` (the round's starting weights); the optimizer's state after the step,
        if it keeps one. A non-finite result (which per-update checks should make
        impossible) is never a model: ``fallback`` is kept instead, and ``refused`` says so."""
        if fallback is None or isinstance(self._optimizer, NoServerOptimizer):
            self.strategy.result_into(out)
        else:
            start = {k: v.float() for k, v in fallback.items()}  # a half-type wire's file
            try:
                self._stepped = self._optimizer.step(start, self.strategy.result())
            except StepRefused:  # not finite: the state is as it was, the weights too
                self._stepped = start
            for key, tensor in out.items():
                tensor.copy_(self._stepped[key])
            if self._stepped is start:
                refused.append(True)
        if fallback is not None and not all(all_finite(t) for t in out.values()):
            for key, tensor in out.items():
                tensor.copy_(fallback[key])
            refused.append(True)
        return self._optimizer.state_dict() or None

    def final_average(self) -> dict[str, torch.Tensor]:
        """The last round's float32 model: the optimizer's last step, or the combined mean."""
        return dict(self._stepped) if self._stepped is not None else self.strategy.result()

    @property
    def optimizer_keeps_state(self) -> bool:
        """Whether the server optimizer has a state to checkpoint (FedAvg has none)."""
        return bool(self._optimizer.state_dict())

    def load_optimizer_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Go on from a checkpointed optimizer state (a restarted job's)."""
        self._optimizer.load_state_dict(state)

    def open_round(self, bound: UpdateBound | None) -> None:
        """A round opened: its uploads are folded afresh, within ``bound``."""
        self._round_over = asyncio.Event()
        self.strategy.reset(bound)

    def close_round(self) -> None:
        """The open round closed: the uploads still being read for it are cut."""
        self._round_over.set()

    def end(self, status: str) -> None:
        """The job is over (``status``): refuse every upload, cut those in flight, and drop
        the accumulators and buffers."""
        self._ended = status
        self._strategy = None
        self._round_over.set()
        self._buffers = BufferPool(keep=0)

    async def receive(
        self, node_id: str, query: UploadQuery, declared: int | None, read: BodyReader
    ) -> dict[str, Any]:
        """Take one node's upload: ``declared`` is its Content-Length, ``read`` reads its body.

        Raises:
            BadRequest, Conflict, Forbidden, RequestTimeout, TooLarge, WeightsError or
            AggregationError: the upload is refused, and changes nothing.
        """
        self._refuse_unless_accepted(node_id, query)  # refuse before reading a byte
        round_over = self._round_over
        closed = Conflict(f"round {query.round} closed during the upload", reason="late")
        # One upload per node at a time, so no node holds more than one of the few slots
        # below; and none outlives its round: a trickling body is cut when the round closes.
        with self._one_in_flight(node_id):
            # A few uploads are read and folded at a time; the rest wait with their bytes
            # still in the socket, so server memory does not grow with the number of nodes.
            async with self._slots:  # a round that closed meanwhile: unless_set refuses
                with self._buffers.lease(min(declared or 0, self.max_bytes)) as buffer:
                    body = await unless_set(read(buffer, self.max_bytes), round_over, closed)
                    self._ctx.metrics.bytes_received.labels(kind="weights").inc(len(body))
                    tensors = await self._decode(node_id, query.round, body)
                    await self._fold(node_id, query, tensors)
                    del body, tensors  # folded (copied): the buffer goes back to the pool
        return {
            "accepted": True,
            "round": query.round,
            "received": len(self._machine.received) if self._machine.round == query.round else None,
        }

    @contextlib.contextmanager
    def _one_in_flight(self, node_id: str) -> Iterator[None]:
        if node_id in self._reading:
            raise Conflict(
                f"an upload from node {node_id} is already in flight", reason="in_flight"
            )
        self._reading.add(node_id)
        try:
            yield
        finally:
            self._reading.discard(node_id)

    async def _decode(self, node_id: str, round_: int, body: memoryview) -> dict[str, torch.Tensor]:
        try:
            return await asyncio.to_thread(decode_tensors, body)
        except WeightsError as exc:
            self._refused(node_id, round_, exc)
            raise

    async def _fold(
        self, node_id: str, query: UploadQuery, tensors: Mapping[str, torch.Tensor]
    ) -> None:
        round_, samples, metrics = query.round, query.samples, query.metrics
        async with self._lock:
            self._refuse_unless_accepted(node_id, query)  # the round may have closed meanwhile
            try:
                await aio_time(
                    self._ctx.metrics.aggregation_duration,
                    asyncio.to_thread(self.strategy.add, tensors, samples),
                )
            except (WeightsError, AggregationError) as exc:
                self._refused(node_id, round_, exc)
                raise
            failpoints.reach("aggregation.after_fold")
            now = self._ctx.clock()
            closed = self._machine.record(node_id, round_, samples, now)
            name = self._participants.names_of([node_id])[0]
            self._ctx.store.record_node_metrics(
                self._job_id, round_, node_id, name, samples, metrics, now
            )
            self._publish(
                "upload_accepted", {"round": round_, "samples": samples, **metrics}, node_id
            )
            self._participants.mark_uploaded(node_id, metrics.get("val_accuracy"))
            if closed is not None:
                await self._close_round(closed)

    def _refused(self, node_id: str, round_: int, exc: Exception) -> None:
        """An upload that was read and refused (malformed, absurd) changes nothing in the
        round, which still waits for a good one from that node: a node that keeps sending
        junk costs deadlines only until it has missed FEDAVG_MAX_MISSED_ROUNDS rounds."""
        self._publish("upload_refused", {"round": round_, "error": str(exc)}, node_id)

    def _refuse_unless_accepted(self, node_id: str, query: UploadQuery) -> None:
        """The one admission check: before the body is read, and again under the lock."""
        round_, rounds = query.round, self._machine.total_rounds
        if not 1 <= round_ <= rounds:
            raise BadRequest(f"round must be within 1..{rounds}, got {round_}")
        if self._ended is not None:  # stopped or failed: the machine may not know
            raise Conflict(f"job {self._job_id} is {self._ended}", reason="finished")
        verdict = self._machine.check(node_id, round_, query.samples)
        if verdict is Verdict.ACCEPTED:
            return
        if verdict is Verdict.NOT_PARTICIPANT:
            raise Forbidden(
                f"node {node_id} holds no shard in job {self._job_id}", reason="not_participant"
            )
        if verdict is Verdict.BAD_SAMPLES:
            raise Forbidden(
                f"samples must be 1..{self._machine.max_samples(node_id)} "
                "(this node's shard, or the train samples it announced for its own data)",
                reason="bad_samples",
            )
        messages = {
            Verdict.LATE: f"round {round_} is closed; continue from the round "
            f"{max(self._checkpoints)} weights",
            Verdict.DUPLICATE: f"round {round_} already has this node's upload",
            Verdict.NOT_SAMPLED: f"round {round_} did not sample node {node_id}: it trains "
            "the rounds that pick it",
            Verdict.EARLY: f"round {round_} is not open yet (open: {self._machine.round})",
            Verdict.FINISHED: f"job {self._job_id} is finished",
        }
        raise Conflict(messages[verdict], reason=verdict.value)

    def _publish(self, kind: str, data: dict[str, Any], node_id: str) -> None:
        self._ctx.bus.publish(kind, data, run_id=self._job_id, node_id=node_id)


async def unless_set(work: Awaitable[T], event: asyncio.Event, refusal: Exception) -> T:
    """``work``'s result, or ``refusal`` raised (and ``work`` cancelled) once ``event`` is set;
    when it is set already, ``work`` never starts."""
    if event.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        raise refusal
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise refusal
    return task.result()
