"""Evaluation-only runs: a saved model evaluated by every connected node that holds a dataset,
on its own test split, with a per-node table and the weighted mean.

``POST /evaluate/{name}?model=FILE`` (NVFlare and OpenFL call it cross-site evaluation): the
holders are the name's majority, as a job's would be (``server.local_jobs``), each reading is
capped at the test count its node announced, and the weighted mean is the summed correct
over the summed samples, so it equals the model's accuracy on the union of their test
splits. The nodes download the model from ``/models/FILE`` and check its sha256. The
request waits for every holder to answer or leave, at most the round deadline; the readings
are kept in SQLite under the run's id (``node_evaluations``) and its end is on the timeline.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec
from node.shared.weights import decode_weights, sha256_hex
from server.core.own_data import NamedData
from server.errors import Conflict
from server.job.evaluations import JobEvaluations
from server.job.participants import Participants
from server.local_jobs import local_parts

if TYPE_CHECKING:
    from server.federation import Federation

log = structlog.get_logger(__name__)


async def evaluate_saved_model(fed: Federation, name: str, model_file: str) -> dict[str, Any]:
    """Run one evaluation of ``model_file`` over ``name``'s holders; its table.

    Raises:
        NotFound: No such model. Conflict: a job or another evaluation is running, nobody
            holds ``name``, or the model does not fit the nodes' data.
    """
    if fed.job is not None and not fed.job.finished.is_set():
        raise Conflict(f"job {fed.job.job_id} is running: evaluate when it has ended")
    if fed.evaluation is not None:
        raise Conflict("another evaluation is running: one at a time")
    path = fed.model_path(model_file)
    data = await asyncio.to_thread(path.read_bytes)
    spec = _spec_of(data, model_file)
    announced = {s.node_id: s.own_data for s in fed.registry.connected() if s.own_data}
    held, parts = local_parts(name, announced)
    _check_fits(spec, held)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"eval-{name}-{stamp}-{secrets.token_hex(2)}"
    names = {n: fed.registry.nodes[n].name for n in parts}
    participants = Participants(fed.registry, run_id, parts, names, _no_training)
    ctx = fed.job_context(fed.settings.aggregation)
    evaluation = JobEvaluations(
        ctx,
        job_id=run_id,
        dataset=name,
        rounds=0,
        test_samples={n: p.test_samples for n, p in parts.items()},
        participants=participants,
    )
    fed.evaluation = evaluation
    try:
        await evaluation.evaluate_final(0, spec, f"/models/{model_file}", sha256_hex(data))
    finally:
        fed.evaluation = None
    nodes = fed.registry.nodes
    left_out = [
        {"node_id": n, "name": nodes[n].name if n in nodes else n, "why": why}
        for n, why in sorted(held.left_out.items())
    ]
    result = _table(evaluation, run_id, model_file, held.name, names) | {"left_out": left_out}
    fed.bus.publish("evaluation_done", result, run_id=run_id)
    log.info(
        "evaluation_done", run_id=run_id, weighted=result["weighted"], missing=result["missing"]
    )
    return result


def _table(
    evaluation: JobEvaluations,
    run_id: str,
    model_file: str,
    dataset: str,
    names: Mapping[str, str],
) -> dict[str, Any]:
    """The answer: each node's reading, who did not answer, the weighted mean."""
    readings = evaluation.core.readings(0)
    answered = {r.node_id for r in readings}
    return {
        "evaluation_id": run_id,
        "dataset": dataset,
        "model": model_file,
        "nodes": [
            {
                "node_id": r.node_id,
                "name": names[r.node_id],
                "samples": r.samples,
                "correct": r.correct,
                "accuracy": r.accuracy,
                "loss": r.loss,
            }
            for r in readings
        ],
        "missing": sorted(names[n] for n in names if n not in answered),
        "weighted": evaluation.summary(0),
    }


def _spec_of(data: bytes, model_file: str) -> ModelSpec:
    try:
        _, meta = decode_weights(data)
    except WeightsError as exc:  # a file the catalogue lists should decode; say so if not
        raise Conflict(f"model {model_file!r} cannot be read: {exc}") from exc
    return meta.spec


def _check_fits(spec: ModelSpec, held: NamedData) -> None:
    shape, classes = held.schema.input_shape, len(held.schema.class_names)
    if tuple(spec.input_shape) != tuple(shape) or spec.num_classes != classes:
        raise Conflict(
            f"the model takes {list(spec.input_shape)} with {spec.num_classes} classes, but "
            f"{held.name!r} on the nodes is {list(shape)} with {classes} classes"
        )


def _no_training(node_id: str) -> Any:
    """An evaluation run's participants are never sent into a round: it has none."""
    raise RuntimeError(f"an evaluation run has no round to send node {node_id} into")
