"""One federated training job: rounds opened and closed, uploads folded, checkpoints written.

The bookkeeping lives in the pure ``RoundMachine`` and ``Strategy``; this class is the shell
that gives them time, files, threads and sockets. Every transition happens under one lock,
so an upload and a deadline can never close the same round twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import torch
from prometheus_async.aio import time as aio_time

from node.shared.atomic import atomic_write_bytes
from node.shared.errors import WeightsError
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import Done, Train, TrainConfig, WeightsReady
from node.shared.weights import (
    MAX_HEADER_BYTES,
    WeightsMeta,
    all_finite,
    decode_tensors,
    decode_weights,
    encode_weights,
    expected_layout,
    on_the_wire,
    sha256_hex,
    weights_buffer,
)
from server import failpoints
from server.core.aggregation import AggregationError, Strategy, UpdateBound, make_strategy
from server.core.evaluate import evaluate
from server.core.rounds import DeadlineExtended, JobFailed, RoundClosed, RoundMachine, Verdict
from server.datasets import DatasetInfo
from server.errors import Conflict, Forbidden
from server.events import EventBus
from server.job.buffers import BufferPool
from server.metrics import Metrics
from server.registry import NodeRegistry
from server.shard_files import ShardFile
from server.store import RoundRow, Store

log = structlog.get_logger(__name__)

BACKGROUND_NICE = 10
SETTLE_BACKLOG = 2
"""Rounds whose evaluation and checkpoint may still run behind the open round: enough for
a slow evaluation to never hold up a close, bounded so their buffers cannot pile up."""


def _lower_priority() -> None:
    # Linux lets one thread be niced alone: the scheduler then gives the cores to the
    # round's critical work (transfers, folds, the nodes' training) and runs the
    # background work in what is left over.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def background_executor() -> ThreadPoolExecutor:
    """The one thread that evaluates each round's model: off the critical path, and niced so
    it stays off it. The federation owns it and shuts it down with the server."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="fedavg-background", initializer=_lower_priority
    )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    round: int
    path: Path
    sha256: str


@dataclass(frozen=True, slots=True)
class Published:
    """A round's global weights, out before they are evaluated and on disk."""

    checkpoint: Checkpoint
    data: bytearray  # the file, served from memory
    state: dict[str, torch.Tensor]  # views into ``data``


@dataclass(frozen=True, slots=True)
class JobContext:
    """The long-lived services a job works with."""

    store: Store
    bus: EventBus
    registry: NodeRegistry
    runs_dir: Path
    models_dir: Path
    aggregation: str
    deadline_s: float
    metrics: Metrics
    background: Executor
    upload_slots: int = 4
    max_upload_bytes: int = 512 << 20  # the operator's cap; a job's own limit is its model's size
    max_update_ratio: float = 10.0
    max_missed_rounds: int = 2
    clock: Callable[[], float] = time.time


def weights_url(run_id: str, round_: int) -> str:
    return f"/sync/weights?job={run_id}&round={round_}"


class Job:
    def __init__(
        self,
        ctx: JobContext,
        *,
        run_id: str,
        dataset: DatasetInfo,
        shards: Mapping[str, ShardFile],
        spec: ModelSpec,
        config: TrainConfig,
        rounds: int,
        seed: int,
        test_split: tuple[torch.Tensor, torch.Tensor],
        names: Mapping[str, str],
        checkpoints: Mapping[int, Checkpoint] | None = None,
        history: list[dict[str, Any]] | None = None,
        started_at: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.dataset = dataset
        self.shards = dict(shards)
        self.spec = spec
        self.config = config
        self.rounds = rounds
        self.seed = seed
        self._test_x, self._test_y = test_split
        self._layout = expected_layout(spec)
        self._wire_layout = on_the_wire(self._layout, config.wire_dtype)  # what files hold
        self.names = dict(names)  # node names at the start: the registry forgets after a restart
        self.checkpoints: dict[int, Checkpoint] = dict(checkpoints or {})
        self.history: list[dict[str, Any]] = list(history or [])
        self.machine = RoundMachine(
            total_rounds=rounds,
            participants=self.shards,
            deadline_s=ctx.deadline_s,
            max_missed_rounds=ctx.max_missed_rounds,
            last_closed=len(self.history),
        )
        # An honest upload is the model's tensors plus a small header: anything bigger is
        # refused before it is read, whatever the operator's FEDAVG_MAX_UPLOAD_MB allows.
        self.max_upload_bytes = min(
            ctx.max_upload_bytes, 8 + MAX_HEADER_BYTES + _tensor_bytes(self._wire_layout)
        )
        # One per job, reset per round; dropped with the job's other big buffers at its end.
        self._strategy: Strategy | None = make_strategy(ctx.aggregation, self._layout)
        self.status = "starting"
        self.error: str | None = None
        self.model_name: str | None = None
        self.final_accuracy: float | None = None
        self.started_at = ctx.clock() if started_at is None else started_at
        self.finished = asyncio.Event()
        self.finished_at: float | None = None
        self._lock = asyncio.Lock()
        self.intake = asyncio.Semaphore(ctx.upload_slots)
        self.upload_buffers = BufferPool(keep=ctx.upload_slots)
        self._latest_bytes: tuple[int, bytearray] | None = None  # what nodes download next
        self._settling: list[asyncio.Task[float | None]] = []  # rounds still settling, oldest first
        self._unwritten: dict[int, bytearray] = {}  # published, checkpoint not on disk yet
        self._timer: asyncio.Task[None] | None = None
        self._reference: Mapping[str, torch.Tensor] | None = None  # what this round started from
        self._uploading: set[str] = set()  # nodes with an upload body being read
        self._round_over = asyncio.Event()  # set when the open round closes (cuts its uploads)
        self._departures: set[asyncio.Task[None]] = set()
        self._log = log.bind(run_id=run_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        state = init_state(self.spec, self.seed)
        initial = await asyncio.to_thread(self._weights_file, 0, _copier(state))
        await asyncio.to_thread(self._write_checkpoint, initial)
        checkpoint = self.checkpoints[0] = initial.checkpoint
        self._latest_bytes = (0, initial.data)
        self._reference = initial.state
        self.ctx.store.create_run(
            run_id=self.run_id,
            dataset=self.dataset.dataset_id,
            dataset_source=self.dataset.source,
            status="running",
            rounds=self.rounds,
            aggregation=self.ctx.aggregation,
            model_spec=self.spec.to_dict(),
            config={
                "train": _config_dict(self.config),
                "seed": self.seed,
                "shards": {
                    node_id: {
                        "name": self.names[node_id],
                        "path": str(f.path),
                        "sha256": f.sha256,
                        "samples": f.samples,
                        "own": f.own,
                    }
                    for node_id, f in self.shards.items()
                },
                "initial": {"path": str(checkpoint.path), "sha256": checkpoint.sha256},
            },
            created=self.started_at,
        )
        self.status = "running"
        self._publish(
            "job_started",
            {
                "dataset": self.dataset.dataset_id,
                "source": self.dataset.source,
                "rounds": self.rounds,
                "nodes": sorted(self._names(self.shards)),
                "aggregation": self.ctx.aggregation,
            },
        )
        async with self._lock:
            self._open_next_round()
            for node_id in self.machine.expected:
                self._send_train(node_id)

    async def resume(self) -> None:
        """Carry on after an orchestrator restart from the last closed round.

        Every participant is expected in the reopened round: they reconnect by themselves
        and get a ``train`` frame as they do; the deadline covers those that never return.
        """
        self.status = "running"
        next_round = self.machine.last_closed + 1
        self._publish(
            "job_resumed",
            {"from_round": next_round, "rounds": self.rounds, "reason": "orchestrator restarted"},
        )
        self._log.info("job_resumed", from_round=next_round, rounds=self.rounds)
        async with self._lock:
            if self.machine.finished:  # crashed after the last round, before the final model
                state = await asyncio.to_thread(self._read_checkpoint, self.rounds)
                self.final_accuracy = self.history[-1]["test_accuracy"]
                await asyncio.to_thread(self._write_final_model, state)
                self._finish("completed")
            else:
                self._reference = await asyncio.to_thread(
                    self._read_checkpoint, self.machine.last_closed
                )
                self._open_next_round(expected=self.shards)

    async def shutdown(self) -> None:
        """The server is going down: after this returns, no deadline fires and nothing more
        is written. The rounds still settling finish (their checkpoints and rows are worth
        keeping); a round that was open resumes after the restart."""
        pending = [t for t in (self._timer, *self._departures) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._settled()

    async def stop(self, reason: str) -> None:
        async with self._lock:
            await self._settled()
            if not self.finished.is_set():
                self._finish("stopped", reason)

    @property
    def strategy(self) -> Strategy:
        if self._strategy is None:  # an upload that raced the job's end (a stop, say)
            raise Conflict(f"job {self.run_id} is finished", reason="finished")
        return self._strategy

    def _finish(self, status: str, error: str | None = None) -> None:
        self.status, self.error = status, error
        # The server keeps the last job for its views: not its accumulators, upload buffers
        # and served bytes (a few hundred MiB for a big model). Later downloads read disk.
        self._strategy, self._latest_bytes, self._reference = None, None, None
        self._round_over.set()
        self._unwritten.clear()
        self.upload_buffers = BufferPool(keep=0)
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        model_url = f"/models/{self.model_name}" if self.model_name else ""
        self.ctx.store.update_run(
            self.run_id,
            status=status,
            finished=self.ctx.clock(),
            error=error,
            model_path=str(self.ctx.models_dir / self.model_name) if self.model_name else None,
            final_accuracy=self.final_accuracy,
        )
        kind = {"completed": "job_done", "stopped": "job_stopped"}.get(status, "job_failed")
        self._publish(
            kind,
            {
                "status": status,
                "error": error,
                "model_url": model_url,
                "model_name": self.model_name,
                "final_accuracy": self.final_accuracy,
            },
        )
        for session in self._connected_participants():
            session.send(Done(job_id=self.run_id, model_url=model_url, status=status))  # type: ignore[arg-type]
            session.state, session.training_round = "idle", None
        self.finished_at = self.ctx.clock()
        self.finished.set()
        self._log.info("job_finished", status=status, error=error, model=self.model_name)

    # -- nodes ---------------------------------------------------------------------------------

    def train_frame(self, node_id: str) -> Train:
        shard = self.shards[node_id]
        latest = self.checkpoints[max(self.checkpoints)]
        return Train(
            job_id=self.run_id,
            dataset=self.dataset.dataset_id,
            shard_url=f"/shards/{self.run_id}/{node_id}",
            shard_sha256=shard.sha256,
            model_spec=self.spec.to_dict(),
            config=self.config,
            rounds=self.rounds,
            round=latest.round + 1,
            weights_url=weights_url(self.run_id, latest.round),
            weights_sha256=latest.sha256,
        )

    def node_rejoined(self, node_id: str) -> None:
        """A participant came back: hand it the newest weights so it trains the open round.
        Rounds wait for it again once it uploads (a reconnect alone does not count, or a
        node could stall rounds by reconnecting before it has missed too many)."""
        if node_id in self.shards and not self.finished.is_set() and self.machine.is_open:
            self._send_train(node_id)

    def node_gone(self, node_id: str) -> None:
        """A participant's socket closed: the open round stops waiting for it now, not at
        its deadline (it closes at once if everybody else is in)."""
        if node_id in self.shards and not self.finished.is_set() and self.machine.is_open:
            task = asyncio.create_task(self._withdraw(node_id), name=f"withdraw-{node_id}")
            self._departures.add(task)
            task.add_done_callback(self._departures.discard)

    async def _withdraw(self, node_id: str) -> None:
        async with self._lock:
            session = self.ctx.registry.nodes.get(node_id)
            if self.finished.is_set() or (session is not None and session.connected):
                return  # the job ended, or the node is back already
            closed = self.machine.withdraw(node_id, self.ctx.clock())
            if closed is not None:
                await self._close_round(closed)

    def _send_train(self, node_id: str) -> None:
        session = self.ctx.registry.nodes.get(node_id)
        if session is not None and session.connected:
            frame = self.train_frame(node_id)
            session.send(frame)
            session.job_id, session.state = self.run_id, "training"
            session.training_round = frame.round  # its progress frames must be about this one
            session.shard_samples = self.shards[node_id].samples

    def _connected_participants(self) -> list[Any]:
        return [s for s in self.ctx.registry.connected() if s.node_id in self.shards]

    def _names(self, node_ids: Iterable[str]) -> list[str]:
        nodes = self.ctx.registry.nodes
        return [self.names.get(n) or (nodes[n].name if n in nodes else n) for n in node_ids]

    # -- uploads -------------------------------------------------------------------------------

    def precheck(self, node_id: str, round_: int, samples: int) -> None:
        """Refuse an upload from its query alone (wrong round, duplicate, bad sample count)."""
        self._refuse_unless_accepted(node_id, round_)
        shard = self.shards[node_id]
        if not 1 <= samples <= shard.samples:
            raise Forbidden(
                f"samples must be 1..{shard.samples} (the size of this node's shard)",
                reason="bad_samples",
            )

    @contextlib.contextmanager
    def reading_upload(self, node_id: str) -> Iterator[asyncio.Event]:
        """While a node's upload body is read: one at a time per node, so one node can
        never hold more than one of the job's upload slots. Yields an event set when the
        open round closes, since an upload for a closed round is only refused later."""
        if node_id in self._uploading:
            raise Conflict(
                f"an upload from node {node_id} is already in flight", reason="in_flight"
            )
        self._uploading.add(node_id)
        try:
            yield self._round_over
        finally:
            self._uploading.discard(node_id)

    async def upload(
        self,
        node_id: str,
        round_: int,
        samples: int,
        metrics: Mapping[str, float],
        body: bytearray | memoryview,
    ) -> dict[str, Any]:
        """Validate and fold one node's weights; raises Conflict/Forbidden/WeightsError."""
        self.precheck(node_id, round_, samples)
        try:
            tensors = await asyncio.to_thread(decode_tensors, body)
        except WeightsError as exc:
            self._refused(node_id, round_, exc)
            raise
        async with self._lock:
            self._refuse_unless_accepted(node_id, round_)  # the round may have closed meanwhile
            try:
                await aio_time(
                    self.ctx.metrics.aggregation_duration,
                    asyncio.to_thread(self.strategy.add, node_id, tensors, samples),
                )
            except (WeightsError, AggregationError) as exc:
                self._refused(node_id, round_, exc)
                raise
            failpoints.reach("aggregation.after_fold")
            now = self.ctx.clock()
            closed = self.machine.record(node_id, round_, samples, now)
            self.ctx.store.record_node_metrics(
                self.run_id, round_, node_id, self._names([node_id])[0], samples, metrics, now
            )
            self._publish(
                "upload_accepted", {"round": round_, "samples": samples, **metrics}, node_id=node_id
            )
            session = self.ctx.registry.nodes.get(node_id)
            if session is not None:
                session.state, session.val_accuracy = "waiting", metrics.get("val_accuracy")
            if closed is not None:
                await self._close_round(closed)
        return {
            "accepted": True,
            "round": round_,
            "received": len(self.machine.received) if self.machine.round == round_ else None,
        }

    def _refused(self, node_id: str, round_: int, exc: Exception) -> None:
        """An upload that was read and refused (malformed, absurd) changes nothing in the
        round, which still waits for a good one from that node: a node that keeps sending
        junk costs deadlines only until it has missed FEDAVG_MAX_MISSED_ROUNDS rounds."""
        self._publish("upload_refused", {"round": round_, "error": str(exc)}, node_id=node_id)

    def _refuse_unless_accepted(self, node_id: str, round_: int) -> None:
        if self.finished.is_set():  # stopped or failed: the machine may not know
            raise Conflict(f"job {self.run_id} is {self.status}", reason="finished")
        verdict = self.machine.check(node_id, round_)
        if verdict is Verdict.ACCEPTED:
            return
        latest = max(self.checkpoints)
        if verdict is Verdict.NOT_PARTICIPANT:
            raise Forbidden(
                f"node {node_id} holds no shard in job {self.run_id}", reason="not_participant"
            )
        messages = {
            Verdict.LATE: f"round {round_} is closed; continue from the round {latest} weights",
            Verdict.DUPLICATE: f"round {round_} already has this node's upload",
            Verdict.EARLY: f"round {round_} is not open yet (open: {self.machine.round})",
            Verdict.FINISHED: f"job {self.run_id} is finished",
        }
        raise Conflict(messages[verdict], reason=verdict.value)

    # -- rounds --------------------------------------------------------------------------------

    def _open_next_round(self, expected: Iterable[str] | None = None) -> None:
        """Open the next round, expecting the participants connected now (or ``expected``)."""
        if expected is None:
            expected = [s.node_id for s in self._connected_participants()]
        round_ = self.machine.open(expected, self.ctx.clock())
        self._round_over = asyncio.Event()
        bound = None
        if self._reference is not None and self.ctx.max_update_ratio > 0:
            bound = UpdateBound.around(self._reference, self.ctx.max_update_ratio)
        self.strategy.reset(bound)
        self._timer = asyncio.create_task(self._expire_later(round_), name=f"deadline-{round_}")
        self._publish(
            "round_opened",
            {
                "round": round_,
                "expected": sorted(self._names(self.machine.expected)),
                "not_waited_for": sorted(self._names(self.machine.not_waited_for)),
                "deadline": self.machine.deadline,
            },
        )

    async def _expire_later(self, round_: int) -> None:
        while True:
            deadline = self.machine.deadline
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - self.ctx.clock()))
            async with self._lock:
                if self.machine.round != round_ or not self.machine.is_open:
                    return
                outcome = self.machine.expire(self.ctx.clock())
                if isinstance(outcome, RoundClosed):
                    for node_id in outcome.missing:
                        self._publish("straggler", {"round": round_}, node_id=node_id)
                        session = self.ctx.registry.nodes.get(node_id)
                        if session is not None and session.connected:
                            session.state = "straggler"
                    await self._close_round(outcome)
                    return
                if isinstance(outcome, DeadlineExtended):
                    self._publish(
                        "deadline_extended",
                        {
                            "round": round_,
                            "deadline": outcome.deadline,
                            "empty_deadlines": outcome.empty_deadlines,
                        },
                    )
                elif isinstance(outcome, JobFailed):
                    await self._settled()  # the last good round is recorded first
                    self._finish("failed", outcome.reason)
                    return

    async def _close_round(self, closed: RoundClosed) -> None:
        """Average straight into the bytes every node downloads next, push ``weights_ready``,
        then evaluate, write and record the round off the critical path (:meth:`_settle`).

        Nodes start the next round as soon as the average exists; what follows it costs
        them nothing. Settling may lag up to :data:`SETTLE_BACKLOG` rounds behind (a close
        waits for older ones), and each settle records after its predecessor, so rows and
        ``round_closed`` events keep round order; the last round settles before the job
        finishes. A crash before a round is recorded replays it on restart.
        """
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._round_over.set()
        if closed.partial:  # by the deadline, or early because the missing nodes left
            self._publish(
                "partial_average",
                {
                    "round": closed.round,
                    "missing": sorted(self._names(closed.missing)),
                    "contributors": sorted(self._names(closed.contributors)),
                },
            )
        await self._settled(backlog=SETTLE_BACKLOG - 1)
        if self.finished.is_set():  # an earlier round's after-work failed the job
            return
        refused: list[bool] = []
        published = await asyncio.to_thread(
            self._weights_file, closed.round, functools.partial(self._average_into, refused)
        )
        if refused:
            self._log.warning("average_refused", round=closed.round)
            self._publish(
                "average_refused",
                {"round": closed.round, "reason": "the average is not finite; weights kept"},
            )
        self._reference = published.state
        self.checkpoints[closed.round] = published.checkpoint
        self._latest_bytes = (closed.round, published.data)
        self._unwritten[closed.round] = published.data
        previous = self._settling[-1] if self._settling else None
        if self.machine.finished:
            accuracy = await self._settle(closed, published, previous)
            if accuracy is not None:
                self.final_accuracy = accuracy
                # From the float32 average, whatever the wire dtype of the published file.
                final = published.state if refused else self.strategy.result()
                await asyncio.to_thread(self._write_final_model, final)
                failpoints.reach("final_model.before_commit")
                self._finish("completed")
            return
        self._open_next_round()
        ready = WeightsReady(
            job_id=self.run_id,
            round=closed.round,
            url=weights_url(self.run_id, closed.round),
            sha256=published.checkpoint.sha256,
        )
        for session in self._connected_participants():  # all expected: opened just now
            if session.job_id == self.run_id:
                session.send(ready)
                session.state, session.training_round = "training", closed.round + 1
                if session.node_id in self.machine.not_waited_for:  # it may still upload
                    session.state = "not_waited_for"
            else:  # (re)joined while no round was open: it has not had its train frame yet
                self._send_train(session.node_id)
        self._settling.append(
            asyncio.create_task(
                self._settle(closed, published, previous), name=f"settle-{closed.round}"
            )
        )

    def _average_into(self, refused: list[bool], out: Mapping[str, torch.Tensor]) -> None:
        """The round's aggregate into ``out``; a non-finite one (which per-update checks
        should make impossible) is never a model: the round's starting weights are kept,
        and ``refused`` says so."""
        self.strategy.result_into(out)
        if self._reference is not None and not all(all_finite(t) for t in out.values()):
            for key, tensor in out.items():
                tensor.copy_(self._reference[key])
            refused.append(True)

    async def _settled(self, backlog: int = 0) -> None:
        """Wait until at most ``backlog`` rounds are still settling (settles never raise)."""
        while len(self._settling) > backlog:
            await self._settling.pop(0)

    async def _settle(
        self,
        closed: RoundClosed,
        published: Published,
        previous: asyncio.Task[float | None] | None,
    ) -> float | None:
        """Evaluate and write the checkpoint (at once: one is CPU, the other mostly disk),
        then, after ``previous`` (the round before), record the round and announce
        ``round_closed``.

        Returns the test accuracy, or None when the job failed (a full disk, say; here or
        in an earlier round): a round whose checkpoint is not safely on disk must not count.
        """
        try:
            evaluation = asyncio.get_running_loop().run_in_executor(
                self.ctx.background,
                functools.partial(evaluate, published.state, self.spec, self._test_x, self._test_y),
            )
            (accuracy, loss), _ = await asyncio.gather(
                aio_time(self.ctx.metrics.evaluation_duration, evaluation),
                asyncio.to_thread(self._write_checkpoint, published),
            )
        except Exception as exc:
            self._log.exception("round_settle_failed", round=closed.round)
            if not self.finished.is_set():
                self._finish("failed", f"round {closed.round}: {exc!r}")
            return None
        finally:
            if previous is not None:
                await previous
        self._unwritten.pop(closed.round, None)
        if self.finished.is_set():
            return None
        failpoints.reach("checkpoint.before_commit")
        checkpoint = published.checkpoint
        contributors = self._names(closed.contributors)
        self.ctx.store.record_round(
            RoundRow(
                run_id=self.run_id,
                round=closed.round,
                opened_at=closed.opened_at,
                closed_at=closed.closed_at,
                contributors=contributors,
                samples=closed.samples,
                partial=closed.partial,
                missing=self._names(closed.missing),
                test_accuracy=accuracy,
                test_loss=loss,
                checkpoint=str(checkpoint.path),
                sha256=checkpoint.sha256,
            )
        )
        summary = {
            "round": closed.round,
            "rounds": self.rounds,
            "contributors": contributors,
            "samples": closed.samples,
            "partial": closed.partial,
            "missing": self._names(closed.missing),
            "test_accuracy": accuracy,
            "test_loss": loss,
            "seconds": closed.closed_at - closed.opened_at,
        }
        self.history.append(summary)
        self._publish("round_closed", summary)
        self._log.info("round_closed", **summary)
        return accuracy

    # -- files ---------------------------------------------------------------------------------

    def _weights_file(
        self, round_: int, fill: Callable[[Mapping[str, torch.Tensor]], None]
    ) -> Published:
        """A round's weights file, its tensors written in place by ``fill``, and its sha256."""
        meta = WeightsMeta(spec=self.spec, round=round_, job_id=self.run_id)
        data, state = weights_buffer(self._wire_layout, meta)
        fill(state)
        path = self.ctx.runs_dir / self.run_id / f"round-{round_:04d}.safetensors"
        return Published(Checkpoint(round_, path, sha256_hex(data)), data, state)

    def _write_checkpoint(self, published: Published) -> None:
        atomic_write_bytes(
            published.checkpoint.path,
            published.data,
            lambda: failpoints.reach("checkpoint.before_rename"),
        )

    async def checkpoint_bytes(self, round_: int) -> bytes | bytearray:
        """A round's global weights; the newest are served from memory, older ones from disk."""
        if self._latest_bytes is not None and self._latest_bytes[0] == round_:
            return self._latest_bytes[1]
        if round_ in self._unwritten:
            return self._unwritten[round_]
        return await asyncio.to_thread(self.checkpoints[round_].path.read_bytes)

    def _read_checkpoint(self, round_: int) -> dict[str, torch.Tensor]:
        checkpoint = self.checkpoints[round_]
        data = checkpoint.path.read_bytes()
        if sha256_hex(data) != checkpoint.sha256:
            raise WeightsError(f"checkpoint {checkpoint.path} does not match its recorded sha256")
        state, _ = decode_weights(data)
        return state

    def _write_final_model(self, state: Mapping[str, torch.Tensor]) -> None:
        last = self.history[-1]
        extra = {
            "kind": "final",
            "dataset": self.dataset.dataset_id,
            "dataset_source": self.dataset.source,
            "rounds": str(self.rounds),
            "contributors": json.dumps([h["contributors"] for h in self.history]),
            "test_accuracy": f"{last['test_accuracy']:.6f}",
            "test_loss": f"{last['test_loss']:.6f}",
            "run_id": self.run_id,
            "aggregation": self.ctx.aggregation,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        data = encode_weights(
            {k: v.float() for k, v in state.items()},  # a checkpoint may be in a half type
            WeightsMeta(spec=self.spec, round=self.rounds, job_id=self.run_id, extra=extra),
        )
        name = f"{self.run_id}.safetensors"
        atomic_write_bytes(
            self.ctx.models_dir / name, data, lambda: failpoints.reach("final_model.before_rename")
        )
        self.model_name = name

    # -- views ---------------------------------------------------------------------------------

    def _publish(self, kind: str, data: dict[str, Any], node_id: str | None = None) -> None:
        self.ctx.bus.publish(kind, data, run_id=self.run_id, node_id=node_id)

    def view(self) -> dict[str, Any]:
        now = self.ctx.clock()
        deadline = self.machine.deadline if self.machine.is_open else None
        return {
            "run_id": self.run_id,
            "state": self.status,
            "dataset": self.dataset.dataset_id,
            "dataset_source": self.dataset.source,
            "round": self.machine.round,
            "rounds": self.rounds,
            "round_open": self.machine.is_open,
            "expected": sorted(self._names(self.machine.expected)),
            "received": sorted(self._names(self.machine.received)),
            "not_waited_for": sorted(self._names(self.machine.not_waited_for)),
            "deadline_in_s": None if deadline is None else max(0.0, deadline - now),
            "time_in_round_s": now - self.machine.opened_at if self.machine.is_open else None,
            "partial_rounds": sum(1 for h in self.history if h["partial"]),
            "aggregation": self.ctx.aggregation,
            "started_at": self.started_at,
            "elapsed_s": (self.finished_at or now) - self.started_at,
            "history": self.history,
            "error": self.error,
            "model_url": f"/models/{self.model_name}" if self.model_name else None,
            "final_accuracy": self.final_accuracy,
        }


def _copier(state: Mapping[str, torch.Tensor]) -> Callable[[Mapping[str, torch.Tensor]], None]:
    def fill(views: Mapping[str, torch.Tensor]) -> None:
        for key, view in views.items():
            view.copy_(state[key])

    return fill


def _tensor_bytes(layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    return sum(
        math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        for shape, dtype in layout.values()
    )


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}
