"""Evaluation where the data is: global models read on the test split of the node's own
datasets, and answered as ``evaluation`` frames (issue 16).

In a job over the node's own data, each round's global weights are read before the node
trains on them, once per job and round (a rejoin that sends the round again is not read
twice). An ``evaluate`` frame asks for one model: a job's final one, or a saved one in an
evaluation-only job, which needs no job assignment at all. Counts travel, never samples.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping

import structlog
import torch

from node.local_datasets import NodeDataset, misfit
from node.shared.errors import WeightsError
from node.shared.evaluate import evaluate
from node.shared.model import ModelSpec
from node.shared.protocol import Evaluate, Evaluation, encode, reading
from node.shared.wandb_sink import WandbSink
from node.shared.weights import decode_weights
from node.transport import HttpTransport, TransferError

log = structlog.get_logger(__name__)

MAX_PENDING = 16
"""Evaluate requests waiting their turn; the server sends one a job and dataset, so more
means a confused or hostile server: the oldest is dropped (and logged)."""


class _Unanswerable(Exception):
    """Why an evaluate request gets no answer (logged, not raised further)."""


class LocalEvaluator:
    """Reads global models on the node's own test splits and queues the answers."""

    def __init__(
        self, datasets: Mapping[str, NodeDataset], wandb: WandbSink, *, node_id: str
    ) -> None:
        self.datasets = datasets
        self.wandb = wandb
        self._requests: deque[Evaluate] = deque()
        self._job: str | None = None  # the job whose rounds are in _rounds_read
        self._rounds_read: set[int] = set()
        self._log = log.bind(node_id=node_id)

    @property
    def pending(self) -> bool:
        return bool(self._requests)

    def request(self, frame: Evaluate) -> None:
        """Queue an ``evaluate`` frame for the work loop (called from the socket's reader)."""
        if len(self._requests) >= MAX_PENDING:
            dropped = self._requests.popleft()
            self._log.warning(
                "evaluation_dropped",
                job_id=dropped.job_id,
                round=dropped.round,
                reason=f"more than {MAX_PENDING} evaluate requests waiting",
            )
        self._requests.append(frame)

    def forget_requests(self) -> None:
        """A connection ended: its requests are answered on no other (the server waits no more)."""
        self._requests.clear()

    async def before_round(
        self,
        outbox: asyncio.Queue[str],
        job_id: str,
        round_: int,
        spec: ModelSpec,
        dataset: str,
        state: Mapping[str, torch.Tensor],
    ) -> None:
        """Read the global model after ``round_`` (the weights the next round starts from)
        on ``dataset``'s test split, unless this job's ``round_`` was read already."""
        if self._job != job_id:
            self._job, self._rounds_read = job_id, set()
        if round_ in self._rounds_read:
            return
        # The agent checked, when it took the job, that it holds the data and that it fits.
        await self._read(outbox, job_id, round_, spec, self.datasets[dataset], state)
        self._rounds_read.add(round_)

    async def answer_next(self, transport: HttpTransport, outbox: asyncio.Queue[str]) -> None:
        """Answer the oldest evaluate request; one that cannot be answered is logged, never
        raised: a wrong request must not end the connection or the training it carries."""
        frame = self._requests.popleft()
        try:
            data, state = await self._request_inputs(transport, frame)
        except _Unanswerable as exc:
            self._log.warning(
                "evaluation_refused",
                job_id=frame.job_id,
                round=frame.round,
                dataset=frame.dataset[:80],
                reason=str(exc),
            )
            return
        await self._read(outbox, frame.job_id, frame.round, frame.model_spec, data, state)

    async def _request_inputs(
        self, transport: HttpTransport, frame: Evaluate
    ) -> tuple[NodeDataset, dict[str, torch.Tensor]]:
        """The dataset and the downloaded weights an evaluate request names, both checked."""
        data = self.datasets.get(frame.dataset)
        if data is None:
            raise _Unanswerable(f"this node holds no dataset {frame.dataset[:80]!r}")
        why = misfit(frame.model_spec, data.schema)
        if why is not None:
            raise _Unanswerable(why)
        try:
            raw = await transport.download(frame.weights_url, frame.weights_sha256)
            state, meta = await asyncio.to_thread(decode_weights, raw)
        except (TransferError, WeightsError) as exc:
            raise _Unanswerable(f"the weights could not be read: {exc}") from None
        if meta.spec != frame.model_spec:
            raise _Unanswerable("the weights' model spec is not the one the request names")
        return data, state

    async def _read(
        self,
        outbox: asyncio.Queue[str],
        job_id: str,
        round_: int,
        spec: ModelSpec,
        data: NodeDataset,
        state: Mapping[str, torch.Tensor],
    ) -> None:
        accuracy, loss = await asyncio.to_thread(evaluate, state, spec, data.test_x, data.test_y)
        samples = len(data.test_y)
        # accuracy is correct / samples in float64: for any samples under 2**31 the product
        # is within far less than 0.5 of the integer count, so rounding gives it back exactly.
        correct = round(accuracy * samples)
        try:
            frame = Evaluation(job_id, round_, samples, correct, reading(loss))
        except ValueError as exc:  # a round no frame can carry (a confused server's)
            self._log.warning("evaluation_refused", job_id=job_id, round=round_, reason=str(exc))
            return
        await outbox.put(encode(frame))  # waits for room: a reading is not a droppable sample
        self._log.info(
            "local_evaluation",
            job_id=job_id,
            round=round_,
            dataset=data.name,
            samples=samples,
            accuracy=accuracy,
            loss=frame.loss,
        )
        self.wandb.log({"local/test_accuracy": accuracy, "local/test_loss": loss}, step=round_)
