"""A local-data job's federated evaluation: the nodes' readings taken in, recorded, announced,
and the final model's evaluation waited for.

The readings themselves are checked and averaged by the pure
:class:`~server.core.federated_eval.FederatedEvaluations`. Each counted reading is a row in
SQLite (``node_evaluations``, so a restarted job keeps them) and a ``node_evaluated`` event
with the round's running weighted mean. The nodes evaluate each round's model before they
train on it; the last round's model has no next round, so the job asks for it
(``evaluate`` frames) and waits, at most its round deadline, before it writes the final model.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from node.shared.model import ModelSpec
from node.shared.protocol import Evaluate, Evaluation
from server.core.federated_eval import FederatedEvaluations, Reading
from server.job.context import JobContext
from server.job.participants import Participants

log = structlog.get_logger(__name__)


class JobEvaluations:
    """One job's readings, with the store, the bus and the nodes around them."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        job_id: str,
        dataset: str,
        rounds: int,
        test_samples: dict[str, int],
        participants: Participants,
    ) -> None:
        self._ctx = ctx
        self._job_id = job_id
        self._dataset = dataset
        self._participants = participants
        self.core = FederatedEvaluations(test_samples, rounds)
        self.core.extend(ctx.store.node_evaluations(job_id))  # a restarted job's, if any
        self._changed = asyncio.Event()  # a reading counted, or a node left: re-check a wait

    def summary(self, round_: int) -> dict[str, Any] | None:
        return self.core.summary(round_)

    def take(self, node_id: str, frame: Evaluation) -> str | None:
        """Count one node's reading; why it does not count, or None."""
        if frame.job_id != self._job_id:
            return "wrong_job"
        reading = Reading(node_id, frame.round, frame.samples, frame.correct, frame.loss)
        why = self.core.add(reading)
        if why is not None:
            log.warning("evaluation_refused", run_id=self._job_id, node_id=node_id, why=why)
            return why
        name = self._participants.names_of([node_id])[0]
        self._ctx.store.record_node_evaluation(self._job_id, reading, name, self._ctx.clock())
        session = self._ctx.registry.nodes.get(node_id)
        if session is not None:
            session.show_evaluation(reading.round, reading.samples, reading.correct, reading.loss)
        data = {
            "round": reading.round,
            "name": name,
            "samples": reading.samples,
            "correct": reading.correct,
            "accuracy": reading.accuracy,
            "loss": reading.loss,
            "federated": self.core.summary(reading.round),
        }
        self._ctx.bus.publish("node_evaluated", data, run_id=self._job_id, node_id=node_id)
        self._changed.set()
        return None

    def node_left(self) -> None:
        self._changed.set()

    async def evaluate_final(
        self, round_: int, spec: ModelSpec, weights_url: str, sha256: str
    ) -> dict[str, Any] | None:
        """Ask each connected participant to evaluate the final model, and wait until each
        has answered or left, or the round deadline passes; the round's summary then."""
        frame = Evaluate(
            job_id=self._job_id,
            dataset=self._dataset,
            round=round_,
            model_spec=spec,
            weights_url=weights_url,
            weights_sha256=sha256,
        )
        asked = [s for s in self._participants.connected() if not self.core.has(s.node_id, round_)]
        for session in asked:
            session.send(frame)
            session.state = "evaluating"
        deadline = self._ctx.clock() + self._ctx.deadline_s
        while any(s.connected and not self.core.has(s.node_id, round_) for s in asked):
            remaining = deadline - self._ctx.clock()
            if remaining <= 0:
                late = [s.name for s in asked if not self.core.has(s.node_id, round_)]
                log.warning("final_evaluation_incomplete", run_id=self._job_id, missing=late)
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
        return self.core.summary(round_)
