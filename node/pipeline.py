"""One training round on a node: its data, the global weights in, local training, weights out.

The agent owns the socket and decides what to train; :class:`RoundPipeline` does the work of
a round over the connection's :class:`HttpTransport`, and keeps what outlives a connection:
the decoded training set and the buffer each round's download refills. A job's samples are
the server's shard (``shards`` mode) or one of the node's own datasets (``local`` mode:
nothing is downloaded but the weights, and each round's global model is evaluated on the
dataset's test split before it is trained on).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
import torch

from node.evaluation import LocalEvaluator
from node.local_datasets import NodeDataset
from node.settings import NodeSettings
from node.shared.atomic import atomic_write_bytes
from node.shared.errors import ProtocolError
from node.shared.model import ModelSpec
from node.shared.protocol import Progress, TrainConfig, UploadQuery, encode, reading
from node.shared.shards import decode_xy
from node.shared.wandb_sink import WandbSink
from node.shared.weights import WIRE_DTYPES, WeightsMeta, decode_weights, sha256_hex, weights_parts
from node.trainer import (
    Aborted,
    LocalResult,
    OptimizerState,
    Step,
    split_validation,
    train_locally,
)
from node.transport import HttpTransport, TransferError

log = structlog.get_logger(__name__)

MAX_PROGRESS_PER_S = 10.0
"""A node's progress frames a second at most: under half the server's default frame budget
(``FEDAVG_NODE_FRAME_RATE``, 20/s), with room for the heartbeat's pings."""
MARKS_PER_EPOCH = 4  # a progress frame at each quarter of an epoch, however short


@dataclass(frozen=True, slots=True)
class Assignment:
    job_id: str
    shard_url: str
    shard_sha256: str
    spec: ModelSpec
    config: TrainConfig
    rounds: int
    data_mode: Literal["shards", "local"] = "shards"
    dataset: str = ""  # in local mode, the node's own dataset (shard_sha256: its fingerprint)


@dataclass(frozen=True, slots=True)
class Target:
    """The next round to train and the global weights to start it from."""

    job_id: str
    round: int
    weights_url: str
    weights_sha256: str


@dataclass(frozen=True, slots=True)
class LocalData:
    key: str  # the shard's sha256, or the own dataset and split it was cut from
    x: torch.Tensor
    y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]


class RoundPipeline:
    """Trains and uploads one round at a time for the agent."""

    def __init__(
        self,
        settings: NodeSettings,
        device: torch.device,
        wandb: WandbSink,
        *,
        is_stale: Callable[[Target], str | None],
        datasets: Mapping[str, NodeDataset] | None = None,
        round_slots: asyncio.Semaphore | None = None,
        keep_weights_buffer: bool = True,
    ) -> None:
        self.settings = settings
        self.device = device
        self.wandb = wandb
        self.datasets = datasets or {}  # the node's own, by name (--data NAME=PATH)
        self.evaluator = LocalEvaluator(self.datasets, wandb, node_id=settings.node_id)
        self.rounds_trained = 0
        self._is_stale = is_stale  # why a target is stale, or None; the training thread polls it
        self._data: LocalData | None = None
        # keep_optimizer_state: the last round's optimizer state, and the job it belongs to.
        self._optimizer_state: tuple[str, OptimizerState] | None = None
        self._weights_buffer: bytearray | None = None  # reused by each round's download
        # Virtual nodes (node/virtual.py) share the slots, so at most that many rounds run at
        # once in the process, and drop the buffer after each round: idle, a virtual node
        # holds its shard and no weights.
        self._round_slots = round_slots
        self._keep_weights_buffer = keep_weights_buffer
        self._log = log.bind(node_id=settings.node_id)

    async def run(
        self, transport: HttpTransport, outbox: asyncio.Queue[str], job: Assignment, target: Target
    ) -> bool:
        """Train ``target`` and upload the result; False if newer weights made it stale first
        (or while the round waited for a slot)."""
        async with self._round_slots or contextlib.nullcontext():
            if (reason := self._is_stale(target)) is not None:
                self._log.info("round_abandoned", round=target.round, reason=reason)
                return False
            try:
                return await self._round(transport, outbox, job, target)
            finally:
                if not self._keep_weights_buffer:
                    self._weights_buffer = None

    async def _round(
        self, transport: HttpTransport, outbox: asyncio.Queue[str], job: Assignment, target: Target
    ) -> bool:
        data = await self._training_data(transport, job)
        state = await self._global_weights(transport, job, target)
        if job.data_mode == "local":  # read the model on the test split before it changes
            await self.evaluator.before_round(
                outbox, job.job_id, target.round - 1, job.spec, job.dataset, state
            )
        try:
            result = await asyncio.to_thread(
                train_locally,
                job.spec,
                state,
                data.x,
                data.y,
                job.config,
                device=self.device,
                seed=job.config.seed * 100_003 + target.round,
                val=data.val,
                on_progress=self._progress_reporter(target, outbox),
                should_abort=lambda: self._is_stale(target) is not None,
                in_place=True,  # the download is ours alone: train its tensors, no copy
                optimizer_state=self._carried_state(job),
            )
        except Aborted:
            reason = self._is_stale(target) or "stale"
            self._log.info("round_abandoned", round=target.round, reason=reason)
            return False
        if result.optimizer_state is not None:
            self._optimizer_state = (job.job_id, result.optimizer_state)
        await self._upload(transport, job, target, result)
        return True

    def _carried_state(self, job: Assignment) -> OptimizerState | None:
        """The optimizer state this job's last round left, if the job keeps it (another
        job's is dropped: its model may not even have the same shapes)."""
        kept = self._optimizer_state
        if kept is None or kept[0] != job.job_id or not job.config.keep_optimizer_state:
            self._optimizer_state = None
            return None
        return kept[1]

    async def _global_weights(
        self, transport: HttpTransport, job: Assignment, target: Target
    ) -> dict[str, torch.Tensor]:
        # The last round's buffer is free again (trained, uploaded): refill it in place.
        weights = self._weights_buffer = await transport.download(
            target.weights_url, target.weights_sha256, into=self._weights_buffer
        )
        state, meta = await asyncio.to_thread(decode_weights, weights)
        if meta.spec != job.spec:
            raise ProtocolError("global weights do not match the job's model spec")
        return state

    async def _upload(
        self, transport: HttpTransport, job: Assignment, target: Target, result: LocalResult
    ) -> None:
        """Send the trained weights; a refusal (4xx) is logged, a server failure raised."""
        # The header and views of the trained tensors, streamed as they lie: no copy.
        wire = WIRE_DTYPES[job.config.wire_dtype]
        body = weights_parts(
            {k: v.to(wire) for k, v in result.state.items()},  # no copy for float32
            WeightsMeta(spec=job.spec, round=target.round, job_id=job.job_id),
        )
        query = UploadQuery(job.job_id, target.round, result.samples, result.metrics)
        try:
            await transport.upload_weights(f"/sync/weights?{query.encode()}", body)
        except TransferError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            # 409: the round closed without us (we straggled); the newest weights come next.
            self._log.warning(
                "upload_refused", round=target.round, status=exc.status, error=str(exc)
            )
            return
        self.rounds_trained += 1
        self.wandb.log({f"local/{k}": v for k, v in result.metrics.items()}, step=target.round)
        self._log.info("round_uploaded", round=target.round, **result.metrics)

    def _progress_reporter(
        self, target: Target, outbox: asyncio.Queue[str]
    ) -> Callable[[Step], None]:
        loop = asyncio.get_running_loop()
        pacer = ProgressPacer(self.settings.progress_interval_s)
        tty = sys.stderr.isatty()

        def report(step: Step) -> None:  # runs in the training thread
            due = pacer.due(step, time.monotonic())
            if due:
                text = encode(
                    Progress(
                        job_id=target.job_id,
                        round=target.round,
                        batch=step.batch,
                        batches=step.batches,
                        loss=reading(step.loss),
                        epoch=step.epoch,
                        epochs=step.epochs,
                    )
                )
                loop.call_soon_threadsafe(_offer, outbox, text)
            if tty and (due or step.batch == step.batches):
                draw_progress_bar(target.round, step)

        return report

    async def _training_data(self, transport: HttpTransport, job: Assignment) -> LocalData:
        """This job's samples to train on, split as in every mode."""
        if job.data_mode == "local":
            return self._own_data(job)
        return await self._shard(transport, job)

    def _own_data(self, job: Assignment) -> LocalData:
        """The train split of the node's own dataset, less its validation split (the same
        rule and seed as a shard's); the agent checked its fingerprint and schema."""
        fraction = self._validation_fraction(job.config)
        key = f"local:{job.dataset}:{job.shard_sha256}:{fraction}:{job.config.seed}"
        if self._data is not None and self._data.key == key:
            return self._data
        own = self.datasets[job.dataset]
        train_x, train_y, val_x, val_y = split_validation(
            own.train_x, own.train_y, fraction, job.config.seed
        )
        self._data = LocalData(key, train_x, train_y, (val_x, val_y))
        self._log.info(
            "own_data_training", dataset=job.dataset, samples=len(train_y), validation=len(val_y)
        )
        return self._data

    def _validation_fraction(self, config: TrainConfig) -> float:
        split = config.validation_split
        return self.settings.validation_split if split is None else split

    async def _shard(self, transport: HttpTransport, job: Assignment) -> LocalData:
        """This job's shard: from memory, else the disk cache (by sha256), else downloaded once."""
        if self._data is not None and self._data.key == job.shard_sha256:
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
        fraction = self._validation_fraction(job.config)
        train_x, train_y, val_x, val_y = split_validation(x, y, fraction, job.config.seed)
        self._data = LocalData(job.shard_sha256, train_x, train_y, (val_x, val_y))
        return self._data


def draw_progress_bar(round_: int, step: Step, width: int = 30) -> None:
    """The local epoch on a terminal: one line, redrawn in place, ended when the epoch is."""
    filled = width * step.batch // max(1, step.batches)
    bar = "#" * filled + "." * (width - filled)
    epoch = f" epoch {step.epoch}/{step.epochs}" if step.epochs > 1 else ""
    end = "\n" if step.batch >= step.batches else ""
    sys.stderr.write(
        f"\r  round {round_:>3}{epoch} [{bar}] {step.batch}/{step.batches}"
        f"  loss {step.loss:.4f}{end}"
    )
    sys.stderr.flush()


class ProgressPacer:
    """Which training steps get a progress frame: one every ``interval_s`` in a long epoch,
    and one at each quarter of every epoch, so that a 0.3 s round still shows its bar move
    and each epoch's number; never more than ``max_per_s`` a second, whatever the round's
    length, which keeps a node far under the server's frame budget. Time is an argument."""

    def __init__(self, interval_s: float, max_per_s: float = MAX_PROGRESS_PER_S) -> None:
        self.interval_s = interval_s
        self.min_gap_s = 1.0 / max_per_s
        self._last: float | None = None
        self._mark = (0, 0)  # (epoch, quarter) of the last step sent

    def due(self, step: Step, now: float) -> bool:
        mark = (step.epoch, MARKS_PER_EPOCH * step.batch // max(1, step.batches))
        since = math.inf if self._last is None else now - self._last
        if since < self.min_gap_s or (since < self.interval_s and mark <= self._mark):
            return False
        self._last, self._mark = now, mark
        return True


def _offer(outbox: asyncio.Queue[str], text: str) -> None:
    # Progress is a sample, not a log: dropping one under pressure is fine.
    with contextlib.suppress(asyncio.QueueFull):
        outbox.put_nowait(text)


def _read_if_matches(path: Path, sha256: str) -> bytes | bytearray | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    return data if sha256_hex(data) == sha256 else None
