"""What a new job trains on: the server's shards (planned and written here) or the nodes' own
data, the settings asked for over the server's defaults, and the test split the server
evaluates on, if any.

``Federation.start_job`` calls :func:`job_data` under its job lock; the mode rule and a local
job's parts are :mod:`server.local_jobs`'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import torch

from node.shared.protocol import OwnDataset
from server.core.job_request import (
    DataSchema,
    JobDefaults,
    JobRequest,
    JobRequestError,
    job_request,
)
from server.core.partition import IID, Partition, PartitionError, partition_samples
from server.core.shard_plan import bounded_capacities, with_overlap
from server.datasets import DatasetInfo, load_split
from server.errors import BadRequest, Conflict
from server.local_jobs import DataMode, data_mode, local_dataset_info, local_parts, same_schema
from server.settings import Settings
from server.shard_files import ShardFile, plan_key, write_shards

if TYPE_CHECKING:
    from server.federation import Federation

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JobData:
    mode: DataMode
    info: DatasetInfo
    files: dict[str, ShardFile]  # each participant's part
    request: JobRequest
    test_set: str | None  # the prepared dataset whose test split the server evaluates on
    test_split: tuple[torch.Tensor, torch.Tensor] | None
    left_out: dict[str, str]  # node id -> why (own data whose schema is not the majority's)


async def job_data(
    fed: Federation, name: str, query: Mapping[str, str], body: Mapping[str, Any] | None
) -> JobData:
    """The data, parts and settings of a job on ``name`` (shards planned and written, or
    the announcing nodes' parts), or the 4xx that says why there can be none."""
    announced = {s.node_id: s.own_data for s in fed.registry.connected() if s.own_data}
    mode = _mode(fed, name, announced, query.get("mode"))
    if mode == "local":
        data, files = local_parts(name, announced)
        info = local_dataset_info(data)
        request = job_request_of(fed.settings, info, query, body)
        test_set = _test_set_for(fed, info)
        left_out = data.left_out
    else:
        request = job_request_of(fed.settings, fed.shelf.get(name), query, body)
        info, files, _ = await plan_shards(fed, name, request.partition)
        test_set, left_out = name, {}
    test_split = None
    if test_set is not None:
        test_split = await asyncio.to_thread(
            load_split, fed.settings.datasets_path, test_set, "test"
        )
    return JobData(mode, info, files, request, test_set, test_split, left_out)


def job_request_of(
    settings: Settings, info: DatasetInfo, query: Mapping[str, str], body: Mapping[str, Any] | None
) -> JobRequest:
    """What the request asks for, over the settings' defaults and the dataset's shape."""
    defaults = JobDefaults(
        spec=settings.model_spec,
        train=settings.train_config,
        rounds=settings.default_rounds,
        max_rounds=settings.max_rounds,
        max_params=settings.max_params,
        partition=settings.partition,
        aggregation=settings.aggregation,
        server_opt=settings.server_opt,
        sampling=settings.sampling,
    )
    schema = DataSchema(info.input_shape, info.num_classes, info.norm_mean, info.norm_std)
    try:
        return job_request(defaults, schema, query, body)
    except JobRequestError as exc:
        raise BadRequest(str(exc)) from exc


def _mode(
    fed: Federation,
    name: str,
    announced: Mapping[str, tuple[OwnDataset, ...]],
    asked: str | None,
) -> DataMode:
    prepared = any(info.dataset_id == name for info in fed.shelf.listed())
    holds = any(d.name == name for held in announced.values() for d in held)
    return data_mode(name, prepared=prepared, announced=holds, asked=asked)


def _test_set_for(fed: Federation, info: DatasetInfo) -> str | None:
    """The server's own test split for a job over the nodes' data: the prepared dataset of
    the same name, where its schema is the nodes' (else the nodes alone evaluate)."""
    prepared = {i.dataset_id: i for i in fed.shelf.listed()}.get(info.dataset_id)
    return info.dataset_id if prepared is not None and same_schema(prepared, info) else None


async def plan_shards(
    fed: Federation, dataset_id: str, partition: Partition = IID
) -> tuple[DatasetInfo, dict[str, ShardFile], str]:
    """Split the training set over the connected nodes as ``partition`` says and write
    their shards."""
    info = fed.shelf.get(dataset_id)
    capacities = bounded_capacities(
        {s.node_id: s.capacity for s in fed.registry.connected()},
        fed.settings.max_capacity_ratio,
    )
    if not capacities:
        raise Conflict("no nodes are connected: start fedavg-node on the workers first")
    try:
        key, files = await asyncio.to_thread(
            _plan_shards, fed.settings, info, capacities, partition
        )
    except PartitionError as exc:  # classes:k that these nodes and data cannot make
        raise BadRequest(str(exc)) from exc
    names = {n: fed.registry.nodes[n].name for n in files}
    fed.bus.publish(
        "shards_planned",
        {
            "dataset": dataset_id,
            "plan": key,
            "partition": str(partition),
            "shards": {names[n]: f.samples for n, f in files.items()},
            "labels": {names[n]: list(f.labels) for n, f in files.items()},
        },
    )
    return info, files, key


def _plan_shards(
    settings: Settings, info: DatasetInfo, capacities: Mapping[str, float], partition: Partition
) -> tuple[str, dict[str, ShardFile]]:
    """The plan's key (it names the folder of its shard files) and each node's written shard,
    with its label histogram. Blocking: call it in a thread."""
    x, y = load_split(settings.datasets_path, info.dataset_id, "train")
    own = partition_samples(y, capacities, partition, seed=settings.seed)
    planned = with_overlap(own, settings.shard_overlap)
    key = plan_key(
        info.train_sha256, capacities, settings.shard_overlap, settings.seed, str(partition)
    )
    # A node whose share rounds down to nothing sits this job out.
    kept = {node_id: shard for node_id, shard in planned.items() if shard.indices}
    folder = settings.home / "shards" / info.dataset_id / key
    return key, write_shards(kept, x, y, folder, info.num_classes)
