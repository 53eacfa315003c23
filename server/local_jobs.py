"""Jobs over the nodes' own data: which mode a job request means, and the job's parts.

``POST /train/{name}`` trains on a dataset the server prepared (shards, the seed's way) or on
data that connected nodes announced they hold themselves (local: no sample ever reaches the
server). Where only one exists, that is the mode; where both do, ``mode=local|shards`` says
which, and a request that does not say is refused rather than guessed.

A local job's parts are the announcing nodes whose schema is the name's majority
(``server.core.own_data``); each may claim at most the train samples it announced, so no node
can take over the average by inflating its count, and each evaluation at most its announced
test samples. The job's :class:`DatasetInfo` is the union as announced: the server knows its
shape, classes and counts, never its pixels, so the model normalises with a neutral 0.5 / 0.5
per channel unless the job's spec says otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from node.shared.protocol import OwnDataset
from server.core.own_data import NamedData, named
from server.datasets import DatasetInfo
from server.errors import BadRequest, Conflict, NotFound
from server.shard_files import ShardFile

DataMode = Literal["shards", "local"]
LOCAL_SOURCE = "own"  # DatasetInfo.source of a local job's data
LOCAL_NORM = 0.5  # per channel mean and std: the server never sees the pixels


def data_mode(name: str, *, prepared: bool, announced: bool, asked: str | None) -> DataMode:
    """The mode of a job on ``name``: whether the server ``prepared`` it, whether connected
    nodes ``announced`` it, and what the request ``asked`` (``mode=``, or None)."""
    if asked not in (None, "local", "shards"):
        raise BadRequest(f"mode must be local or shards, got {asked[:40]!r}")
    if asked == "local" and not announced:
        raise Conflict(f"no connected node holds a dataset named {name!r} (mode=local)")
    if asked == "shards" and not prepared:
        raise NotFound(
            f"dataset {name!r} is not prepared on the server (mode=shards): "
            f"POST /datasets/{name}/prepare first"
        )
    if asked is not None:
        return asked  # type: ignore[return-value]
    if prepared and announced:
        raise Conflict(
            f"{name!r} is both a dataset the server prepared and data connected nodes hold: "
            "add mode=shards (the server's, shipped to the nodes) or mode=local (the nodes' own)"
        )
    return "local" if announced else "shards"


def local_parts(
    name: str, announced: Mapping[str, tuple[OwnDataset, ...]]
) -> tuple[NamedData, dict[str, ShardFile]]:
    """The majority of ``name``'s holders among ``announced`` (node id -> what it said), and
    each agreeing node's part; 409 when no connected node holds ``name``."""
    holders = {n: d for n, held in announced.items() for d in held if d.name == name}
    if not holders:
        raise Conflict(f"no connected node holds a dataset named {name!r}")
    data = named(name, holders)
    parts = {
        node_id: ShardFile(
            node_id,
            None,
            held.fingerprint,
            samples=held.train_samples,
            own=held.train_samples,
            labels=held.label_counts or (),
            test_samples=held.test_samples,
        )
        for node_id, held in data.agreeing.items()
    }
    return data, parts


def local_dataset_info(data: NamedData) -> DatasetInfo:
    """What the server may know of the union of the agreeing nodes' data."""
    channels = data.schema.input_shape[0]
    fingerprints = sorted(d.fingerprint for d in data.agreeing.values())
    nodes = len(data.agreeing)
    return DatasetInfo(
        dataset_id=data.name,
        source=LOCAL_SOURCE,
        source_detail=f"held by {nodes} node{'s' if nodes != 1 else ''}, never sent",
        train_samples=data.train_samples,
        test_samples=sum(d.test_samples for d in data.agreeing.values()),
        num_classes=len(data.schema.class_names),
        input_shape=data.schema.input_shape,
        train_sha256=hashlib.sha256("".join(fingerprints).encode()).hexdigest(),
        test_sha256="",
        prepared_at=datetime.now(UTC).isoformat(timespec="seconds"),
        class_names=data.schema.class_names,
        norm_mean=(LOCAL_NORM,) * channels,
        norm_std=(LOCAL_NORM,) * channels,
    )


def same_schema(server: DatasetInfo, local: DatasetInfo) -> bool:
    """Whether the server's test split of ``server`` can evaluate a model of ``local``."""
    return (
        tuple(server.input_shape) == tuple(local.input_shape)
        and server.num_classes == local.num_classes
        and (not server.class_names or tuple(server.class_names) == tuple(local.class_names))
    )
