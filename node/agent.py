"""The node's control loop: the socket to an orchestrator, its frames, and reconnecting.

One connection at a time; on loss, reconnect with exponential backoff plus jitter, trying each
orchestrator URL in turn. What the frames ask for is trained by ``node.pipeline``, in a worker
thread, so heartbeats keep flowing; ``evaluate`` requests are answered by ``node.evaluation``,
before the next round is trained.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping

import aiohttp
import structlog
import torch

from node.local_datasets import NodeDataset, local_job_refusal
from node.pipeline import Assignment, RoundPipeline, Target
from node.settings import NodeSettings
from node.shared import __version__
from node.shared.errors import FedavgError, ProtocolError
from node.shared.protocol import (
    ID_TAKEN,
    Done,
    Error,
    Evaluate,
    Frame,
    Hello,
    Left,
    OwnData,
    OwnDataset,
    Train,
    WeightsReady,
    Welcome,
    decode,
    decode_as,
    encode,
)
from node.shared.wandb_sink import WandbSink
from node.transport import HttpTransport, TransferError, unreachable_reason

log = structlog.get_logger(__name__)

WELCOME_TIMEOUT_S = 15.0
OUTBOX_FRAMES = 32


class JoinRefused(FedavgError):
    """The orchestrator refused this node (bad join token): retrying cannot help."""


class Agent:
    """One node's life: connect, say hello, follow the frames, hand rounds to the pipeline."""

    def __init__(
        self,
        settings: NodeSettings,
        capacity: float,
        device: torch.device,
        *,
        secret: str,
        own_data: tuple[OwnDataset, ...] = (),
        datasets: Mapping[str, NodeDataset] | None = None,
        round_slots: asyncio.Semaphore | None = None,
        keep_weights_buffer: bool = True,
    ) -> None:
        self.settings = settings
        self.own_data = own_data  # what the node tells each orchestrator it holds
        self.datasets = datasets or {}  # what it holds, by name: never sent
        self._secret = secret  # proves we own settings.node_id (node/identity.py)
        self.capacity = capacity
        self.device = device
        self.assignment: Assignment | None = None
        self.target: Target | None = None
        self.jobs_done = 0
        self._job_ended = False  # a done frame came: wrap up once its evaluations are answered
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._log = log.bind(node_id=settings.node_id)
        self.wandb = WandbSink(
            settings.wandb_mode, settings.wandb_project, settings.cache_dir / "wandb"
        )
        self.pipeline = RoundPipeline(
            settings,
            device,
            self.wandb,
            is_stale=self._stale,
            datasets=self.datasets,
            round_slots=round_slots,  # shared by a process's virtual nodes (node/virtual.py)
            keep_weights_buffer=keep_weights_buffer,
        )
        self.evaluator = self.pipeline.evaluator

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Connect, serve, reconnect — until ``stop()`` or a job ends with exit_after_job."""
        urls = self.settings.orchestrators
        index, attempt = 0, 0
        while not self._stopping.is_set():
            url = urls[index % len(urls)]
            failure = None
            try:
                welcomed = await self._serve(url)
            except JoinRefused:
                raise
            except (
                aiohttp.ClientError,
                OSError,
                TimeoutError,
                ProtocolError,
                TransferError,
            ) as exc:
                failure, welcomed = unreachable_reason(exc), False
            if self._stopping.is_set():
                break
            if welcomed:
                attempt = 0  # it worked until it dropped: try the same URL again first
            else:
                index, attempt = index + 1, attempt + 1
            delay = min(self.settings.max_backoff_s, 0.5 * 2 ** min(attempt, 10)) * random.uniform(
                0.5, 1.5
            )
            next_url = urls[index % len(urls)]
            if failure is not None:  # one line a retry: what failed, in words, and when again
                self._log.warning(
                    "orchestrator_unreachable",
                    url=url,
                    reason=failure,
                    retry_in_s=round(delay, 1),
                    next_url=next_url,
                )
            else:
                self._log.info("reconnecting", in_s=round(delay, 2), next_url=next_url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _serve(self, url: str) -> bool:
        """One connection's lifetime; True if the orchestrator welcomed us."""
        transport = HttpTransport(
            url,
            join_token=self.settings.node_token,
            ca_cert=str(self.settings.ca_cert) if self.settings.ca_cert else None,
            idle_timeout_s=self.settings.idle_timeout_s,
            heartbeat_s=self.settings.heartbeat_s,
        )
        try:
            async with await self._connect(transport, url) as ws:
                await ws.send_str(encode(self._hello()))
                welcome = await self._welcome(ws)
                transport.session_token = welcome.session_token
                self._log.info("connected", url=url, session=welcome.node_id)
                if self.own_data:
                    await ws.send_str(encode(OwnData(datasets=self.own_data)))
                await self._session(ws, transport)
                return True
        finally:
            await transport.close()

    async def _connect(self, transport: HttpTransport, url: str) -> aiohttp.ClientWebSocketResponse:
        try:
            return await transport.connect()
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise JoinRefused(
                    f"{url} refused this node: {exc.message} (check FEDAVG_NODE_TOKEN)"
                ) from exc
            raise

    def _hello(self) -> Hello:
        return Hello(
            node_id=self.settings.node_id,
            name=self.settings.name,
            capacity=self.capacity,
            device=str(self.device),
            version=__version__,
            secret=self._secret,
        )

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, transport: HttpTransport) -> None:
        """Work, send and receive until one of them ends (or fails), or the node stops."""
        outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_FRAMES)
        tasks = [
            asyncio.create_task(self._work(transport, outbox)),
            asyncio.create_task(self._send_frames(ws, outbox)),
            asyncio.create_task(self._receive(ws)),
            asyncio.create_task(self._stopping.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if self._stopping.is_set() and not ws.closed:
                while not outbox.empty():  # a job's last evaluation may be queued still
                    await ws.send_str(outbox.get_nowait())
                await ws.send_str(encode(Left(reason="shutting down")))
        finally:
            self.target = None  # tells a training thread to give up
            self.evaluator.forget_requests()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._job_ended:  # the connection ended before the work loop could
                self._wrap_up_job()

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> Welcome:
        msg = await asyncio.wait_for(ws.receive(), WELCOME_TIMEOUT_S)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ProtocolError(f"expected a welcome frame, got {msg.type.name}")
        frame = decode(msg.data)
        if isinstance(frame, Error) and frame.code == ID_TAKEN:
            # Another secret owns this id (or our identity file was lost): retrying cannot help.
            raise JoinRefused(f"{frame.message} (start with another --node-id)")
        if isinstance(frame, Error):
            raise ProtocolError(f"orchestrator said {frame.code}: {frame.message}")
        return decode_as(msg.data, Welcome)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    self._handle(decode(msg.data))
                except ProtocolError as exc:
                    self._log.warning("frame_refused", error=str(exc))
        self._log.info("socket_closed", code=ws.close_code)

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Train):
            self._assign(frame)
        elif isinstance(frame, WeightsReady):
            job = self.assignment
            if job is None or job.job_id != frame.job_id:
                return
            self.target = (
                Target(frame.job_id, frame.round + 1, frame.url, frame.sha256)
                if frame.round < job.rounds
                else None
            )
        elif isinstance(frame, Done):
            self._log.info(
                "job_done", job_id=frame.job_id, status=frame.status, model_url=frame.model_url
            )
            self.assignment, self.target = None, None
            self.jobs_done += 1
            self._job_ended = True
        elif isinstance(frame, Evaluate):
            self.evaluator.request(frame)
        elif isinstance(frame, Error):
            self._log.warning("orchestrator_error", code=frame.code, message=frame.message)
        self._changed.set()

    def _assign(self, frame: Train) -> None:
        if frame.data_mode == "local":
            why = local_job_refusal(
                self.datasets, frame.dataset, frame.shard_sha256, frame.model_spec
            )
            if why is not None:  # not trained; the server leaves a silent node out in time
                self._log.warning(
                    "local_data_mismatch", job_id=frame.job_id, dataset=frame.dataset, reason=why
                )
                return
        if self.assignment is None or self.assignment.job_id != frame.job_id:
            if self._job_ended:  # a new job already: the last one's wrap-up waits no more
                self._wrap_up_job()
            self.wandb.start(
                group=frame.job_id,
                name=self.settings.name,
                job_type="node",
                config={
                    "node_id": self.settings.node_id,
                    "device": str(self.device),
                    "capacity": self.capacity,
                },
            )
        self.assignment = Assignment(
            job_id=frame.job_id,
            shard_url=frame.shard_url,
            shard_sha256=frame.shard_sha256,
            spec=frame.model_spec,
            config=frame.config,
            rounds=frame.rounds,
            data_mode=frame.data_mode,
            dataset=frame.dataset,
        )
        self.target = Target(frame.job_id, frame.round, frame.weights_url, frame.weights_sha256)
        self._log.info("job_assigned", job_id=frame.job_id, round=frame.round, rounds=frame.rounds)

    async def _send_frames(
        self, ws: aiohttp.ClientWebSocketResponse, outbox: asyncio.Queue[str]
    ) -> None:
        while True:
            await ws.send_str(await outbox.get())

    async def _work(self, transport: HttpTransport, outbox: asyncio.Queue[str]) -> None:
        """Answer each evaluate request, one at a time and before any round; then train each
        new target once. Newer weights abort an epoch that is now stale."""
        last_done: tuple[str, int] | None = None
        while True:
            if self.evaluator.pending:
                await self.evaluator.answer_next(transport, outbox)
                continue
            if self._job_ended:
                self._wrap_up_job()
            target, job = self.target, self.assignment
            if target is None or job is None or (target.job_id, target.round) == last_done:
                self._changed.clear()
                await self._changed.wait()
                continue
            if await self.pipeline.run(transport, outbox, job, target):
                last_done = (target.job_id, target.round)

    def _wrap_up_job(self) -> None:
        """After a job's done frame and the evaluate requests sent before it: its W&B run
        holds the final model's reading, then ends; with exit_after_job, so does the node."""
        self._job_ended = False
        self.wandb.finish()
        if self.settings.exit_after_job:
            self._stopping.set()

    def _stale(self, target: Target) -> str | None:
        """Why ``target`` is not worth training any more, or None while it is (thread-safe)."""
        current = self.target
        if self._stopping.is_set():
            return "the node is stopping"
        if current is target:
            return None
        if current is not None:
            return "newer weights arrived"
        return "the job ended" if self.assignment is None else "the connection closed"
