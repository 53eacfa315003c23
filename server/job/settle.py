"""Settling closed rounds off the critical path: evaluation, checkpoint, row, ``round_closed``;
then the run's end: the final and best model files, the run's row and event.

A round's nodes start the next one as soon as its average is published; what follows it
costs them nothing. Settling may lag up to :data:`SETTLE_BACKLOG` rounds behind (a close
waits for older ones), and each settle records after its predecessor, so rows and
``round_closed`` events keep round order. A crash before a round is recorded replays it on
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import structlog
import torch
from prometheus_async.aio import time as aio_time

from node.shared.atomic import atomic_write_bytes
from node.shared.evaluate import evaluate
from node.shared.model import ModelSpec
from node.shared.weights import WeightsMeta, encode_weights
from server import failpoints
from server.core.rounds import RoundClosed
from server.datasets import DatasetInfo
from server.job.best import best_metadata, best_model_name, best_round, figures, scored_rows
from server.job.checkpoints import Published, WeightsFiles
from server.job.context import JobContext
from server.job.participants import Participants
from server.store import RoundRow

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


class Settler:
    """One job's closed rounds on their way to disk, SQLite and the timeline, oldest first."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        job_id: str,
        rounds: int,
        dataset: DatasetInfo,
        spec: ModelSpec,
        test_split: tuple[torch.Tensor, torch.Tensor] | None,
        files: WeightsFiles,
        history: list[dict[str, Any]],
        participants: Participants,
        finished: asyncio.Event,
        fail: Callable[[str], None],
    ) -> None:
        self._ctx = ctx
        self._job_id = job_id
        self._rounds = rounds
        self._dataset = dataset
        self._spec = spec
        self._test_split = test_split  # None: the server has none for this data (own data)
        self._files = files
        self._history = history  # the job's: each settled round is appended
        self._participants = participants
        self._finished = finished  # the job's
        self._fail = fail  # ends the job as failed
        self._settling: list[asyncio.Task[bool]] = []  # rounds still settling, oldest first
        self._log = log.bind(run_id=job_id)

    def settle_later(self, closed: RoundClosed, published: Published) -> None:
        """Settle a round in the background, after the rounds settling before it."""
        previous = self._settling[-1] if self._settling else None
        self._settling.append(
            asyncio.create_task(
                self.settle_round(closed, published, previous), name=f"settle-{closed.round}"
            )
        )

    async def settle_now(self, closed: RoundClosed, published: Published) -> bool:
        """Settle a round (the last) in the foreground; whether it was recorded (see below)."""
        previous = self._settling[-1] if self._settling else None
        return await self.settle_round(closed, published, previous)

    async def wait_settled(self, backlog: int = 0) -> None:
        """Wait until at most ``backlog`` rounds are still settling (settles never raise)."""
        while len(self._settling) > backlog:
            await self._settling.pop(0)

    async def settle_round(
        self,
        closed: RoundClosed,
        published: Published,
        previous: asyncio.Task[bool] | None,
    ) -> bool:
        """Evaluate and write the checkpoint (at once: one is CPU, the other mostly disk),
        then, after ``previous`` (the round before), record the round and announce
        ``round_closed``.

        Returns False when the job failed (a full disk, say; here or in an earlier round):
        a round whose checkpoint is not safely on disk must not count.
        """
        try:
            (accuracy, loss), _ = await asyncio.gather(
                self._evaluate(published),
                asyncio.to_thread(self._files.write, published),
            )
        except Exception as exc:
            self._log.exception("round_settle_failed", round=closed.round)
            if not self._finished.is_set():
                self._fail(f"round {closed.round}: {exc!r}")
            return False
        finally:
            if previous is not None:
                await previous
        self._files.written(closed.round)
        if self._finished.is_set():
            return False
        failpoints.reach("checkpoint.before_commit")
        self._record(closed, published, accuracy, loss)
        return True

    async def _evaluate(self, published: Published) -> tuple[float | None, float | None]:
        """(accuracy, loss) on the server's test split, on the niced thread; (None, None)
        when the server has none for this data (the nodes evaluate on theirs)."""
        if self._test_split is None:
            return None, None
        x, y = self._test_split
        evaluation = asyncio.get_running_loop().run_in_executor(
            self._ctx.background, functools.partial(evaluate, published.state, self._spec, x, y)
        )
        return await aio_time(self._ctx.metrics.evaluation_duration, evaluation)

    def _record(
        self,
        closed: RoundClosed,
        published: Published,
        accuracy: float | None,
        loss: float | None,
    ) -> None:
        """The round's row (after its checkpoint file: a row always names a whole file),
        its place in the history, and its ``round_closed`` event."""
        checkpoint = published.checkpoint
        contributors = self._participants.names_of(closed.contributors)
        missing = self._participants.names_of(closed.missing)
        self._ctx.store.record_round(
            RoundRow(
                run_id=self._job_id,
                round=closed.round,
                opened_at=closed.opened_at,
                closed_at=closed.closed_at,
                contributors=contributors,
                samples=closed.samples,
                partial=closed.partial,
                missing=missing,
                test_accuracy=accuracy,
                test_loss=loss,
                checkpoint=str(checkpoint.path),
                sha256=checkpoint.sha256,
            )
        )
        summary = {
            "round": closed.round,
            "rounds": self._rounds,
            "contributors": contributors,
            "samples": closed.samples,
            "partial": closed.partial,
            "missing": missing,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "seconds": closed.closed_at - closed.opened_at,
            "federated": None,  # own data: the nodes' readings, which the job's view adds
        }
        self._history.append(summary)
        self._ctx.bus.publish("round_closed", summary, run_id=self._job_id)
        self._log.info("round_closed", **summary)

    def record_end(
        self, status: str, error: str | None, model_name: str | None, accuracy: float | None
    ) -> None:
        """The run's row and event once it has ended (``status``): completed, stopped, failed."""
        model_url = f"/models/{model_name}" if model_name else ""
        self._ctx.store.update_run(
            self._job_id,
            status=status,
            finished=self._ctx.clock(),
            error=error,
            model_path=str(self._ctx.models_dir / model_name) if model_name else None,
            final_accuracy=accuracy,
        )
        kind = {"completed": "job_done", "stopped": "job_stopped"}.get(status, "job_failed")
        self._ctx.bus.publish(
            kind,
            {
                "status": status,
                "error": error,
                "model_url": model_url,
                "model_name": model_name,
                "final_accuracy": accuracy,
            },
            run_id=self._job_id,
        )

    def write_models(
        self, final: Mapping[str, torch.Tensor], federated: Sequence[Mapping[str, Any]] = ()
    ) -> str:
        """Write the trained model and the best round's, by the context's ``best_metric``
        (FEDAVG_BEST_METRIC; both float32, the history in their metadata); returns the final
        one's file name. The best is its round's checkpoint, read back and checked: nothing
        is kept per round for it. ``federated``: the nodes' weighted readings by round (own
        data), which choose the best where the server has no test split, and go into the
        metadata. Blocking: call it in a thread."""
        created = datetime.now(UTC).isoformat(timespec="seconds")
        metric = self._ctx.best_metric
        rows = scored_rows(self._history, federated)
        if self._test_split is None:
            metric = f"federated_{metric.removeprefix('test_')}"
        best = best_round(rows, metric)
        if best is not None:
            round_ = int(best["round"])
            extra = best_metadata(best, metric)
            state = self._files.read(round_)
            self._write_model(best_model_name(self._job_id), state, round_, extra, created)
        extra = {"kind": "final", **figures(rows[-1])}
        name = f"{self._job_id}.safetensors"
        # The final model last: a run's row names it once the job is recorded as completed.
        crash_here = functools.partial(failpoints.reach, "final_model.before_rename")
        self._write_model(name, final, self._rounds, extra, created, crash_here)
        return name

    def _write_model(
        self,
        name: str,
        state: Mapping[str, torch.Tensor],
        round_: int,
        extra: Mapping[str, str],
        created: str,
        before_rename: Callable[[], None] | None = None,
    ) -> None:
        extra = {
            **extra,
            "dataset": self._dataset.dataset_id,
            "dataset_source": self._dataset.source,
            "class_names": json.dumps(list(self._dataset.class_names)),
            "rounds": str(self._rounds),
            "contributors": json.dumps([h["contributors"] for h in self._history]),
            "run_id": self._job_id,
            "aggregation": self._ctx.aggregation,
            "server_opt": json.dumps(dict(self._ctx.server_opt)),
            "created": created,
        }
        data = encode_weights(
            {k: v.float() for k, v in state.items()},  # a checkpoint may be in a half type
            WeightsMeta(spec=self._spec, round=round_, job_id=self._job_id, extra=extra),
        )
        atomic_write_bytes(self._ctx.models_dir / name, data, before_rename)
