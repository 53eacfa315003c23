"""The node's control loop: keep a socket to an orchestrator, train what it pushes, upload.

One connection at a time; on loss, reconnect with exponential backoff plus jitter, trying each
orchestrator URL in turn. Training runs in a worker thread so heartbeats keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import structlog
import torch

from node.settings import NodeSettings
from node.shared import __version__
from node.shared.atomic import atomic_write_bytes
from node.shared.errors import FedavgError, ProtocolError
from node.shared.model import ModelSpec
from node.shared.protocol import (
    ID_TAKEN,
    Done,
    Error,
    Frame,
    Hello,
    Left,
    Progress,
    Train,
    TrainConfig,
    WeightsReady,
    Welcome,
    decode,
    decode_as,
    encode,
    reading,
)
from node.shared.shards import decode_xy
from node.shared.wandb_sink import WandbSink
from node.shared.weights import WIRE_DTYPES, WeightsMeta, decode_weights, sha256_hex, weights_parts
from node.trainer import Aborted, split_validation, train_epoch
from node.transport import HttpTransport, TransferError

log = structlog.get_logger(__name__)

WELCOME_TIMEOUT_S = 15.0
OUTBOX_FRAMES = 32


class JoinRefused(FedavgError):
    """The orchestrator refused this node (bad join token): retrying cannot help."""


@dataclass(frozen=True, slots=True)
class Assignment:
    job_id: str
    shard_url: str
    shard_sha256: str
    spec: ModelSpec
    config: TrainConfig
    rounds: int


@dataclass(frozen=True, slots=True)
class Target:
    """The next round to train and the global weights to start it from."""

    job_id: str
    round: int
    weights_url: str
    weights_sha256: str


@dataclass(frozen=True, slots=True)
class LocalData:
    sha256: str
    x: torch.Tensor
    y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]


class Agent:
    def __init__(
        self, settings: NodeSettings, capacity: float, device: torch.device, *, secret: str
    ) -> None:
        self.settings = settings
        self._secret = secret  # proves we own settings.node_id (node/identity.py)
        self.capacity = capacity
        self.device = device
        self.assignment: Assignment | None = None
        self.target: Target | None = None
        self.rounds_trained = 0
        self.jobs_done = 0
        self._changed = asyncio.Event()
        self._data: LocalData | None = None
        self._weights_buffer: bytearray | None = None  # reused by each round's download
        self._stopping = asyncio.Event()
        self._log = log.bind(node_id=settings.node_id)
        self.wandb = WandbSink(
            settings.wandb_mode, settings.wandb_project, settings.cache_dir / "wandb"
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Connect, serve, reconnect — until ``stop()`` or a job ends with exit_after_job."""
        urls = self.settings.orchestrators
        index, attempt = 0, 0
        while not self._stopping.is_set():
            url = urls[index % len(urls)]
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
                self._log.warning("orchestrator_unreachable", url=url, error=repr(exc))
                welcomed = False
            if self._stopping.is_set():
                break
            if welcomed:
                attempt = 0  # it worked until it dropped: try the same URL again first
            else:
                index, attempt = index + 1, attempt + 1
            delay = min(self.settings.max_backoff_s, 0.5 * 2 ** min(attempt, 10)) * random.uniform(
                0.5, 1.5
            )
            self._log.info("reconnecting", in_s=round(delay, 2), next_url=urls[index % len(urls)])
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
            try:
                ws = await transport.connect()
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    raise JoinRefused(
                        f"{url} refused this node: {exc.message} (check FEDAVG_NODE_TOKEN)"
                    ) from exc
                raise
            async with ws:
                await ws.send_str(
                    encode(
                        Hello(
                            node_id=self.settings.node_id,
                            name=self.settings.name,
                            capacity=self.capacity,
                            device=str(self.device),
                            version=__version__,
                            secret=self._secret,
                        )
                    )
                )
                welcome = await self._welcome(ws)
                transport.session_token = welcome.session_token
                self._log.info("connected", url=url, session=welcome.node_id)
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
                        await ws.send_str(encode(Left(reason="shutting down")))
                finally:
                    self.target = None  # tells a training thread to give up
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                return True
        finally:
            await transport.close()

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
            if self.assignment is None or self.assignment.job_id != frame.job_id:
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
                spec=ModelSpec.from_dict(frame.model_spec),
                config=frame.config,
                rounds=frame.rounds,
            )
            self.target = Target(frame.job_id, frame.round, frame.weights_url, frame.weights_sha256)
            self._log.info(
                "job_assigned", job_id=frame.job_id, round=frame.round, rounds=frame.rounds
            )
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
            self.wandb.finish()
            if self.settings.exit_after_job:
                self._stopping.set()
        elif isinstance(frame, Error):
            self._log.warning("orchestrator_error", code=frame.code, message=frame.message)
        self._changed.set()

    async def _send_frames(
        self, ws: aiohttp.ClientWebSocketResponse, outbox: asyncio.Queue[str]
    ) -> None:
        while True:
            await ws.send_str(await outbox.get())

    async def _work(self, transport: HttpTransport, outbox: asyncio.Queue[str]) -> None:
        """Train each new target once; newer weights abort an epoch that is now stale."""
        last_done: tuple[str, int] | None = None
        while True:
            target, job = self.target, self.assignment
            if target is None or job is None or (target.job_id, target.round) == last_done:
                self._changed.clear()
                await self._changed.wait()
                continue
            data = await self._local_data(transport, job)
            # The last round's buffer is free again (trained, uploaded): refill it in place.
            weights = self._weights_buffer = await transport.download(
                target.weights_url, target.weights_sha256, into=self._weights_buffer
            )
            state, meta = await asyncio.to_thread(decode_weights, weights)
            if meta.spec != job.spec:
                raise ProtocolError("global weights do not match the job's model spec")
            try:
                result = await asyncio.to_thread(
                    train_epoch,
                    job.spec,
                    state,
                    data.x,
                    data.y,
                    job.config,
                    device=self.device,
                    seed=job.config.seed * 100_003 + target.round,
                    val=data.val,
                    on_progress=self._progress_reporter(target, outbox),
                    should_abort=functools.partial(self._stale, target),
                    in_place=True,  # the download is ours alone: train its tensors, no copy
                )
            except Aborted:
                self._log.info(
                    "round_abandoned", round=target.round, reason="newer weights arrived"
                )
                continue
            last_done = (target.job_id, target.round)
            # The header and views of the trained tensors, streamed as they lie: no copy.
            wire = WIRE_DTYPES[job.config.wire_dtype]
            body = weights_parts(
                {k: v.to(wire) for k, v in result.state.items()},  # no copy for float32
                WeightsMeta(spec=job.spec, round=target.round, job_id=job.job_id),
            )
            query = urlencode(
                {
                    "job": job.job_id,
                    "round": target.round,
                    "samples": result.samples,
                    **{k: f"{v:.6g}" for k, v in result.metrics.items() if math.isfinite(v)},
                }
            )
            try:
                await transport.upload_weights(f"/sync/weights?{query}", body)
                self.rounds_trained += 1
                self.wandb.log(
                    {f"local/{k}": v for k, v in result.metrics.items()}, step=target.round
                )
                self._log.info("round_uploaded", round=target.round, **result.metrics)
            except TransferError as exc:
                if exc.status is None or exc.status >= 500:
                    raise
                # 409: the round closed without us (we straggled); the newest weights come next.
                self._log.warning(
                    "upload_refused", round=target.round, status=exc.status, error=str(exc)
                )

    def _stale(self, target: Target) -> bool:
        """True once newer weights replaced ``target`` or the node is stopping (thread-safe)."""
        return self.target is not target or self._stopping.is_set()

    def _progress_reporter(
        self, target: Target, outbox: asyncio.Queue[str]
    ) -> Callable[[int, int, float], None]:
        loop = asyncio.get_running_loop()
        interval = self.settings.progress_interval_s
        last = [0.0]
        tty = sys.stderr.isatty()

        def report(batch: int, batches: int, loss: float) -> None:  # runs in the training thread
            now = time.monotonic()
            if batch != batches and now - last[0] < interval:
                return
            last[0] = now
            text = encode(
                Progress(
                    job_id=target.job_id,
                    round=target.round,
                    batch=batch,
                    batches=batches,
                    loss=reading(loss),
                )
            )
            loop.call_soon_threadsafe(_offer, outbox, text)
            if tty:
                draw_progress_bar(target.round, batch, batches, loss)

        return report

    async def _local_data(self, transport: HttpTransport, job: Assignment) -> LocalData:
        """This job's shard: from memory, else the disk cache (by sha256), else downloaded once."""
        if self._data is not None and self._data.sha256 == job.shard_sha256:
            return self._data
        path = self.settings.cache_dir / "shards" / f"{job.shard_sha256}.safetensors"
        raw = await asyncio.to_thread(_read_if_matches, path, job.shard_sha256)
        if raw is None:
            raw = await transport.download(job.shard_url, job.shard_sha256)
            await asyncio.to_thread(atomic_write_bytes, path, raw)
            self._log.info("shard_downloaded", bytes=len(raw), sha256=job.shard_sha256[:12])
        else:
            self._log.info("shard_from_cache", sha256=job.shard_sha256[:12])
        x, y = decode_xy(raw, input_shape=job.spec.input_shape, num_classes=job.spec.num_classes)
        split = job.config.validation_split
        fraction = self.settings.validation_split if split is None else split
        train_x, train_y, val_x, val_y = split_validation(x, y, fraction, job.config.seed)
        self._data = LocalData(job.shard_sha256, train_x, train_y, (val_x, val_y))
        return self._data


def draw_progress_bar(round_: int, batch: int, batches: int, loss: float, width: int = 30) -> None:
    """The local epoch on a terminal: one line, redrawn in place, ended when the epoch is."""
    filled = width * batch // max(1, batches)
    bar = "#" * filled + "." * (width - filled)
    end = "\n" if batch >= batches else ""
    sys.stderr.write(f"\r  round {round_:>3} [{bar}] {batch}/{batches}  loss {loss:.4f}{end}")
    sys.stderr.flush()


def _offer(outbox: asyncio.Queue[str], text: str) -> None:
    # Progress is a sample, not a log: dropping one under pressure is fine.
    with contextlib.suppress(asyncio.QueueFull):
        outbox.put_nowait(text)


def _read_if_matches(path: Path, sha256: str) -> bytes | bytearray | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    return data if sha256_hex(data) == sha256 else None
