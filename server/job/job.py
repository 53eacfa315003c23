"""One federated training job: its lifecycle, its rounds opened and closed, its nodes, its views.

The bookkeeping lives in the pure ``RoundMachine`` and ``Strategy``; this class is the shell
that gives them time, files and sockets, with its parts beside it: uploads come in through
:mod:`server.job.intake`, closed rounds settle through :mod:`server.job.settle`, weights
files live in :mod:`server.job.checkpoints`. Every transition happens under one lock, so an
upload and a deadline can never close the same round twice.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

import structlog
import torch

from node.shared.model import ModelSpec, init_state
from node.shared.protocol import Done, Train, TrainConfig, WeightsReady
from node.shared.weights import Layout, expected_layout, on_the_wire
from server import failpoints
from server.core.aggregation import UpdateBound
from server.core.job_request import train_view
from server.core.rounds import DeadlineExtended, JobFailed, RoundClosed, RoundMachine
from server.core.sampling import sample_nodes
from server.datasets import DatasetInfo
from server.job.checkpoints import Checkpoint, Published, WeightsFiles, copier
from server.job.context import SHARDS, DataSource, JobContext
from server.job.evaluations import JobEvaluations
from server.job.intake import Intake
from server.job.participants import Participants
from server.job.settle import SETTLE_BACKLOG, Settler, background_executor
from server.shard_files import ShardFile

__all__ = ["Checkpoint", "DataSource", "Job", "JobContext", "background_executor", "weights_url"]

log = structlog.get_logger(__name__)


def weights_url(job_id: str, round_: int) -> str:
    return f"/sync/weights?job={job_id}&round={round_}"


class Job:
    def __init__(
        self,
        ctx: JobContext,
        *,
        job_id: str,
        dataset: DatasetInfo,
        shards: Mapping[str, ShardFile],
        spec: ModelSpec,
        config: TrainConfig,
        rounds: int,
        seed: int,
        test_split: tuple[torch.Tensor, torch.Tensor] | None,
        names: Mapping[str, str],
        partition: str = "iid",
        source: DataSource = SHARDS,
        checkpoints: Mapping[int, Checkpoint] | None = None,
        history: list[dict[str, Any]] | None = None,
        started_at: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.job_id, self.dataset, self.shards = job_id, dataset, dict(shards)
        self.spec, self.config, self.rounds, self.seed = spec, config, rounds, seed
        self.partition = partition  # how the shards split the labels, as the plan was asked
        self.source = source  # where the samples are: shipped shards, or the nodes' own
        layout = expected_layout(spec)
        wire_layout = on_the_wire(layout, config.wire_dtype)  # what files hold
        self.history: list[dict[str, Any]] = list(history or [])
        self.machine = _machine(self)
        self.status = "starting"
        self.error: str | None = None
        self.model_name: str | None = None
        self.final_accuracy: float | None = None
        self.started_at = ctx.clock() if started_at is None else started_at
        self.finished = asyncio.Event()
        self.finished_at: float | None = None
        self._lock = asyncio.Lock()
        self.participants = _participants(self, names)
        self.names = self.participants.names
        self.files = WeightsFiles(ctx.runs_dir / job_id, job_id, spec, wire_layout, checkpoints)
        self.checkpoints = self.files.checkpoints  # the same dict: the files keep it current
        self.intake = _intake(self, layout, wire_layout)
        self.settler = _settler(self, test_split)
        self.evaluations = _evaluations(self) if source.mode == "local" else None
        self._timer: asyncio.Task[None] | None = None
        self._reference: Mapping[str, torch.Tensor] | None = None  # what this round started from
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(run_id=job_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        state = init_state(self.spec, self.seed)
        initial = await asyncio.to_thread(self.files.build, 0, copier(state))
        await asyncio.to_thread(self.files.write, initial)
        self.files.publish(initial, on_disk=True)
        self._reference = initial.state
        self.ctx.store.create_run(**_run_row(self, initial.checkpoint))
        self.status = "running"
        self._publish("job_started", _started_data(self))
        for node_id, why in self.source.left_out.items():  # own data not of the majority's schema
            self._publish("node_left_out", _left_out_data(self, why), node_id=node_id)
        async with self._lock:
            self._open_next_round()
            for node_id in self.machine.expected:
                self.participants.send_train(node_id)

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
                state = await asyncio.to_thread(self.files.read, self.rounds)
                await self._write_final_model(state)
            else:
                self._reference = await asyncio.to_thread(self.files.read, self.machine.last_closed)
                self._open_next_round(expected=self.shards)

    async def shutdown(self) -> None:
        """The server is going down: after this returns, no deadline fires and nothing more
        is written. The rounds still settling finish (their checkpoints and rows are worth
        keeping); a round that was open resumes after the restart."""
        pending = [t for t in (self._timer, *self._tasks) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.settler.wait_settled()

    async def stop(self, reason: str) -> None:
        """Stop now: the nodes are told at once, and the rounds closed before the stop still
        settle and are recorded before the run's end (under load an evaluation can take
        minutes, and the nodes must not train on meanwhile)."""
        async with self._lock:
            if self.finished.is_set():
                return
            self._release_nodes("stopped")
            await self.settler.wait_settled()
            if not self.finished.is_set():
                self._finish("stopped", reason)

    def _release_nodes(self, status: str) -> None:
        """No more rounds: refuse and cut uploads, stop the deadline, send ``done`` (once)."""
        self.intake.end(status)
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        model_url = f"/models/{self.model_name}" if self.model_name else ""
        self.participants.send_done(Done(job_id=self.job_id, model_url=model_url, status=status))  # type: ignore[arg-type]

    def _finish(self, status: str, error: str | None = None) -> None:
        self.status, self.error = status, error
        self._release_nodes(status)
        # The server keeps the last job for its views: not its accumulators, upload buffers
        # and served bytes (a few hundred MiB for a big model). Later downloads read disk.
        self.files.release()
        self._reference = None
        self.settler.record_end(status, error, self.model_name, self.final_accuracy)
        self.finished_at = self.ctx.clock()
        self.finished.set()
        self._log.info("job_finished", status=status, error=error, model=self.model_name)

    # -- nodes ---------------------------------------------------------------------------------

    def node_rejoined(self, node_id: str) -> None:
        """A participant came back: hand it the newest weights so it trains the open round.
        Rounds wait for it again once it uploads (a reconnect alone does not count, or a
        node could stall rounds by reconnecting before it has missed too many)."""
        if node_id in self.shards and not self.finished.is_set() and self.machine.is_open:
            sampled = self.machine.sampled
            if sampled is None or node_id in sampled:
                self.participants.send_train(node_id)
            else:
                self.participants.mark_not_sampled(node_id)

    def node_gone(self, node_id: str) -> None:
        """A participant's socket closed: the open round stops waiting for it now, not at
        its deadline (it closes at once if everybody else is in)."""
        if self.evaluations is not None:
            self.evaluations.node_left()  # the final evaluation stops waiting for it
        if node_id in self.shards and not self.finished.is_set() and self.machine.is_open:
            self._in_background(self._withdraw(node_id), f"withdraw-{node_id}")

    async def _withdraw(self, node_id: str) -> None:
        async with self._lock:
            if self.finished.is_set() or self.participants.is_connected(node_id):
                return  # the job ended, or the node is back already
            closed = self.machine.withdraw(node_id, self.ctx.clock())
            if closed is not None:
                await self._close_round(closed)

    async def checkpoint_bytes(self, round_: int) -> bytes | bytearray:
        """A round's global weights; the newest are served from memory, older ones from disk."""
        return await self.files.bytes_of(round_)

    # -- rounds --------------------------------------------------------------------------------

    def _open_next_round(self, expected: Iterable[str] | None = None) -> None:
        """Open the next round, expecting the participants connected now (or ``expected``),
        or those of them client sampling picks; the others idle this round."""
        if expected is None:
            expected = [s.node_id for s in self.participants.connected()]
        picked = _sample(self, expected)
        round_ = self.machine.open(picked or expected, self.ctx.clock(), eligible=picked)
        self.participants.idle_unless_sampled(picked)
        bound = None
        if self._reference is not None and self.ctx.max_update_ratio > 0:
            bound = UpdateBound.around(self._reference, self.ctx.max_update_ratio)
        self.intake.open_round(bound)
        self._timer = asyncio.create_task(self._expire_later(round_), name=f"deadline-{round_}")
        self._publish("round_opened", _opened_data(self, round_))

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
                        self.participants.mark_straggler(node_id)
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
                    await self.settler.wait_settled()  # the last good round is recorded first
                    self._finish("failed", outcome.reason)
                    return

    async def _close_round(self, closed: RoundClosed) -> None:
        """Average straight into the bytes every node downloads next, push ``weights_ready``,
        then evaluate, write and record the round off the critical path (:mod:`settle`);
        the last round settles before the job finishes."""
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self.intake.close_round()
        if closed.partial:  # by the deadline, or early because the missing nodes left
            names_of = self.participants.names_of
            self._publish(
                "partial_average",
                {
                    "round": closed.round,
                    "missing": sorted(names_of(closed.missing)),
                    "contributors": sorted(names_of(closed.contributors)),
                },
            )
        await self.settler.wait_settled(backlog=SETTLE_BACKLOG - 1)
        if self.finished.is_set():  # an earlier round's after-work failed the job
            return
        published, refused = await self._publish_average(closed.round)
        if self.machine.finished:
            await self._finish_last_round(closed, published, refused)
            return
        self._open_next_round()
        ready = WeightsReady(
            job_id=self.job_id,
            round=closed.round,
            url=weights_url(self.job_id, closed.round),
            sha256=published.checkpoint.sha256,
        )
        self.participants.push_ready(ready, self.machine.not_waited_for, self.machine.sampled)
        self.settler.settle_later(closed, published)

    async def _publish_average(self, round_: int) -> tuple[Published, bool]:
        """The round's average as the newest weights; True when it was refused (the round's
        starting weights are published instead)."""
        refused: list[bool] = []
        fill = functools.partial(self.intake.average_into, self._reference, refused)
        published = await asyncio.to_thread(self.files.build, round_, fill)
        if refused:
            self._log.warning("average_refused", round=round_)
            self._publish(
                "average_refused",
                {"round": round_, "reason": "the average is not finite; weights kept"},
            )
        self._reference = published.state
        self.files.publish(published)
        return published, bool(refused)

    async def _finish_last_round(
        self, closed: RoundClosed, published: Published, refused: bool
    ) -> None:
        if await self.settler.settle_now(closed, published):
            # From the float32 average, whatever the wire dtype of the published file.
            final = published.state if refused else self.intake.final_average()
            if self.evaluations is None:
                await self._write_final_model(final)
            else:  # the nodes evaluate it first: the last upload is answered meanwhile
                self._in_background(self._write_final_model(final), "final-model")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=f"{name}-{self.job_id}")
        self._tasks.add(task)  # shutdown cancels what is still running
        task.add_done_callback(self._tasks.discard)

    async def _write_final_model(self, final: Mapping[str, torch.Tensor]) -> None:
        """Over the nodes' own data, the nodes evaluate the final model first; then the
        final and best models are written and the job completes."""
        federated, by_round = await _final_evaluation(self)
        if self.finished.is_set():  # stopped meanwhile
            return
        # The server's test split where it has one for the data, else the nodes' readings.
        last = self.history[-1]["test_accuracy"]
        self.final_accuracy = federated["accuracy"] if last is None and federated else last
        write = functools.partial(self.settler.write_models, final, by_round)
        self.model_name = await asyncio.to_thread(write)
        failpoints.reach("final_model.before_commit")
        self._finish("completed")

    # -- views ---------------------------------------------------------------------------------

    def _publish(self, kind: str, data: dict[str, Any], node_id: str | None = None) -> None:
        self.ctx.bus.publish(kind, data, run_id=self.job_id, node_id=node_id)

    def view(self) -> dict[str, Any]:
        return _view(self)


async def _final_evaluation(
    job: Job,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The nodes' readings of the final model (own data: asked for and waited for), and
    every round's, for the model files; (None, []) over the server's shards."""
    if job.evaluations is None:
        return None, []
    url, sha256 = weights_url(job.job_id, job.rounds), job.checkpoints[job.rounds].sha256
    final = await job.evaluations.evaluate_final(job.rounds, job.spec, url, sha256)
    return final, job.evaluations.core.summaries()


def _train_frame(job: Job, node_id: str) -> Train:
    """The ``train`` frame that sends ``node_id`` into the open round, from the newest weights."""
    shard = job.shards[node_id]
    latest = job.checkpoints[max(job.checkpoints)]
    return Train(
        job_id=job.job_id,
        dataset=job.dataset.dataset_id,
        # Own data: no URL; the sha256 is the fingerprint the node announced, which its data
        # must still have (a node restarted with other data does not train on it).
        shard_url=f"/shards/{job.job_id}/{node_id}" if shard.on_server else "",
        shard_sha256=shard.sha256,
        data_mode=job.source.mode,
        model_spec=job.spec,
        config=job.config,
        rounds=job.rounds,
        round=latest.round + 1,
        weights_url=weights_url(job.job_id, latest.round),
        weights_sha256=latest.sha256,
    )


def _view(job: Job) -> dict[str, Any]:
    """What the status and monitor views show of a job."""
    now = job.ctx.clock()
    machine, names_of = job.machine, job.participants.names_of
    deadline = machine.deadline if machine.is_open else None
    return {
        "run_id": job.job_id,
        "state": job.status,
        "dataset": job.dataset.dataset_id,
        "dataset_source": job.dataset.source,
        "round": machine.round,
        "rounds": job.rounds,
        "round_open": machine.is_open,
        "expected": sorted(names_of(machine.expected)),
        "received": sorted(names_of(machine.received)),
        "not_waited_for": sorted(names_of(machine.not_waited_for)),
        "deadline_in_s": None if deadline is None else max(0.0, deadline - now),
        "time_in_round_s": now - machine.opened_at if machine.is_open else None,
        "partial_rounds": sum(1 for h in job.history if h["partial"]),
        "sampling": job.ctx.sampling.view(),
        "sampled": None if machine.sampled is None else sorted(names_of(machine.sampled)),
        "aggregation": job.ctx.aggregation,
        "server_opt": dict(job.ctx.server_opt),
        "model": job.spec.to_dict(),
        "train": train_view(job.config),
        "partition": job.partition,
        **_data_view(job),
        "started_at": job.started_at,
        "elapsed_s": (job.finished_at or now) - job.started_at,
        "history": _history_view(job),
        "error": job.error,
        "model_url": f"/models/{job.model_name}" if job.model_name else None,
        "final_accuracy": job.final_accuracy,
    }


def _started_data(job: Job) -> dict[str, Any]:
    """``job_started``'s data. W&B takes it as the run's config, so it names everything a
    reader compares runs by: the model, training, partition and server optimizer."""
    return {
        "dataset": job.dataset.dataset_id,
        "source": job.dataset.source,
        "rounds": job.rounds,
        "nodes": sorted(job.participants.names_of(job.shards)),
        "aggregation": job.ctx.aggregation,
        "server_opt": dict(job.ctx.server_opt),
        "partition": job.partition,
        "model": job.spec.to_dict(),
        "train": train_view(job.config),
        "sampling": job.ctx.sampling.view(),
        **_data_view(job),
    }


def _left_out_data(job: Job, why: str) -> dict[str, Any]:
    log.warning("node_left_out", run_id=job.job_id, dataset=job.dataset.dataset_id, why=why)
    return {"dataset": job.dataset.dataset_id, "why": why}


def _data_view(job: Job) -> dict[str, Any]:
    """Where the job's data is, and who was left out of it (own data: the schema differs)."""
    names_of = job.participants.names_of
    return {
        "data_mode": job.source.mode,
        "test_set": job.source.test_set,
        "left_out": [
            {"node_id": n, "name": names_of([n])[0], "why": why}
            for n, why in sorted(job.source.left_out.items())
        ],
        "federated": job.evaluations.core.summaries() if job.evaluations is not None else [],
    }


def _history_view(job: Job) -> list[dict[str, Any]]:
    """The closed rounds, each with its model's federated evaluation (own data) so far."""
    if job.evaluations is None:
        return job.history  # each row's federated readings: None
    return [{**h, "federated": job.evaluations.summary(int(h["round"]))} for h in job.history]


def _run_row(job: Job, initial: Checkpoint) -> dict[str, Any]:
    """A new run's row: what a restart needs to rebuild the job."""
    return {
        "run_id": job.job_id,
        "dataset": job.dataset.dataset_id,
        "dataset_source": job.dataset.source,
        "status": "running",
        "rounds": job.rounds,
        "aggregation": job.ctx.aggregation,
        "model_spec": job.spec.to_dict(),
        "config": {
            "train": _config_dict(job.config),
            "seed": job.seed,
            "partition": job.partition,
            "server_opt": dict(job.ctx.server_opt),
            "sampling": job.ctx.sampling.view(),
            "data_mode": job.source.mode,
            "test_set": job.source.test_set,
            "left_out": dict(job.source.left_out),
            # Own data: what the server knows of it (a restart has no prepared dataset).
            "dataset_info": job.dataset.to_dict() if job.source.mode == "local" else None,
            "shards": {
                node_id: {
                    "name": job.names[node_id],
                    "path": str(f.path) if f.path is not None else None,
                    "sha256": f.sha256,
                    "samples": f.samples,
                    "own": f.own,
                    "labels": list(f.labels),
                    "test_samples": f.test_samples,
                }
                for node_id, f in job.shards.items()
            },
            "initial": {"path": str(initial.path), "sha256": initial.sha256},
        },
        "created": job.started_at,
    }


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def _participants(job: Job, names: Mapping[str, str]) -> Participants:
    frame_for = functools.partial(_train_frame, job)
    return Participants(job.ctx.registry, job.job_id, job.shards, names, frame_for)


def _intake(job: Job, layout: Layout, wire_layout: Layout) -> Intake:
    return Intake(
        job.ctx,
        job_id=job.job_id,
        machine=job.machine,
        lock=job._lock,
        checkpoints=job.checkpoints,
        participants=job.participants,
        layout=layout,
        wire_layout=wire_layout,
        close_round=job._close_round,
    )


def _opened_data(job: Job, round_: int) -> dict[str, Any]:
    machine, names_of = job.machine, job.participants.names_of
    return {
        "round": round_,
        "expected": sorted(names_of(machine.expected)),
        "not_waited_for": sorted(names_of(machine.not_waited_for)),
        "sampled": None if machine.sampled is None else sorted(names_of(machine.sampled)),
        "deadline": machine.deadline,
    }


def _sample(job: Job, candidates: Iterable[str]) -> list[str] | None:
    """Client sampling's pick for the next round among ``candidates`` (None: everyone
    trains). A pick is recorded as the round opens, so a restart reopens the round with the
    pick it had, whoever is connected by then."""
    sampling, candidates = job.ctx.sampling, list(candidates)
    if sampling.everyone or not candidates:  # nobody to pick from: whoever comes trains
        return None
    round_ = job.machine.last_closed + 1
    recorded = job.ctx.store.round_sample(job.job_id, round_)
    if recorded is not None:
        return recorded
    picked = sample_nodes(candidates, sampling, seed=job.seed, job_id=job.job_id, round_=round_)
    job.ctx.store.record_round_sample(job.job_id, round_, picked)
    return picked


def _machine(job: Job) -> RoundMachine:
    """Each participant may claim at most its part's samples (a shard's, or the train
    samples its own data was announced with)."""
    return RoundMachine(
        total_rounds=job.rounds,
        participants={node_id: f.samples for node_id, f in job.shards.items()},
        deadline_s=job.ctx.deadline_s,
        max_missed_rounds=job.ctx.max_missed_rounds,
        last_closed=len(job.history),
    )


def _evaluations(job: Job) -> JobEvaluations:
    return JobEvaluations(
        job.ctx,
        job_id=job.job_id,
        dataset=job.dataset.dataset_id,
        rounds=job.rounds,
        test_samples={n: f.test_samples for n, f in job.shards.items()},
        participants=job.participants,
    )


def _settler(job: Job, test_split: tuple[torch.Tensor, torch.Tensor] | None) -> Settler:
    return Settler(
        job.ctx,
        job_id=job.job_id,
        rounds=job.rounds,
        dataset=job.dataset,
        spec=job.spec,
        test_split=test_split,
        files=job.files,
        history=job.history,
        participants=job.participants,
        finished=job.finished,
        fail=functools.partial(job._finish, "failed"),
    )
