"""Each participant's part of a job's data: a shard file on disk (one safetensors per node, named
by plan, reused when already written), or the node's own data, which the server never holds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from node.shared.atomic import atomic_write_bytes
from node.shared.shards import encode_xy
from node.shared.weights import sha256_hex
from server.core.shard_plan import Shard


@dataclass(frozen=True, slots=True)
class ShardFile:
    """A participant's part: ``samples`` is the most an upload of it may claim."""

    node_id: str
    path: Path | None  # None: the node's own data (``sha256`` is then its fingerprint)
    sha256: str
    samples: int
    own: int
    labels: tuple[int, ...] = ()  # the part's samples per class (its label histogram)
    test_samples: int = 0  # own data: the node's announced test split, its readings' cap

    @property
    def on_server(self) -> bool:
        return self.path is not None


def plan_key(
    dataset_sha256: str,
    capacities: Mapping[str, float],
    overlap: float,
    seed: int,
    partition: str = "iid",
) -> str:
    """A stable name for a plan: same data, nodes, capacities, overlap and partition -> same
    files (an iid plan keeps the key it had before partitions existed)."""
    fields: dict[str, object] = {
        "data": dataset_sha256,
        "nodes": sorted((k, round(v, 3)) for k, v in capacities.items()),
        "overlap": overlap,
        "seed": seed,
    }
    if partition != "iid":
        fields["partition"] = partition
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_shards(
    plan: Mapping[str, Shard], x: torch.Tensor, y: torch.Tensor, folder: Path, num_classes: int
) -> dict[str, ShardFile]:
    """Write each node's samples (skipping files already complete) and describe them."""
    files: dict[str, ShardFile] = {}
    for node_id, shard in plan.items():
        path = folder / f"{hashlib.sha256(node_id.encode()).hexdigest()[:16]}.safetensors"
        index = torch.tensor(shard.indices, dtype=torch.int64)
        data = encode_xy(x[index], y[index], {"node_id": node_id, "own": str(shard.own)})
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
        labels = tuple(torch.bincount(y[index], minlength=num_classes).tolist())
        files[node_id] = ShardFile(
            node_id, path, sha256_hex(data), len(shard.indices), shard.own, labels
        )
    return files
