"""The nodes' own datasets, by name: who holds each, the schema most of them agree on, and why
the others are left out.

Nodes announce what they hold (``node.shared.protocol.OwnDataset``: never a sample). Two
nodes may call different data by one name, so a name's **schema** is the one most of its
nodes announce: input shape, dtype and class names, all three. A tie goes to the schema with
more training samples, then to the one that sorts first, so the answer never depends on
the order nodes joined in. A node whose schema differs is listed with a reason that names
the field, which a job over the data will leave out with the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node.shared.protocol import OwnDataset


@dataclass(frozen=True, slots=True, order=True)
class Schema:
    """What a model trained on the data must fit."""

    input_shape: tuple[int, ...]
    dtype: str
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, dataset: OwnDataset) -> Schema:
        return cls(tuple(dataset.input_shape), dataset.dtype, tuple(dataset.class_names))

    def differs(self, other: Schema) -> str:
        """Why ``other`` is not this schema, naming the first field that differs."""
        if other.input_shape != self.input_shape:
            majority = list(self.input_shape)
            return f"input_shape {list(other.input_shape)}, not the majority's {majority}"
        if other.dtype != self.dtype:
            return f"dtype {other.dtype}, not the majority's {self.dtype}"
        if len(other.class_names) != len(self.class_names):
            return f"{len(other.class_names)} classes, not the majority's {len(self.class_names)}"
        return "class names differ from the majority's"


@dataclass(frozen=True, slots=True)
class NamedData:
    """One name's holders: the majority schema, the nodes that agree, and the others."""

    name: str
    schema: Schema
    agreeing: dict[str, OwnDataset]  # node id -> what it announced
    left_out: dict[str, str]  # node id -> why

    @property
    def train_samples(self) -> int:
        return sum(d.train_samples for d in self.agreeing.values())

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.schema.input_shape),
            "dtype": self.schema.dtype,
            "num_classes": len(self.schema.class_names),
            "class_names": list(self.schema.class_names),
            "nodes": sorted(self.agreeing),
            "train_samples": self.train_samples,
            "test_samples": sum(d.test_samples for d in self.agreeing.values()),
            "left_out": [{"node_id": n, "why": why} for n, why in sorted(self.left_out.items())],
        }


def by_name(announced: Mapping[str, Iterable[OwnDataset]]) -> list[NamedData]:
    """Every announced name, sorted, from each node's announcement (node id -> datasets)."""
    holders: dict[str, dict[str, OwnDataset]] = {}
    for node_id, datasets in announced.items():
        for dataset in datasets:
            holders.setdefault(dataset.name, {})[node_id] = dataset
    return [named(name, holders[name]) for name in sorted(holders)]


def named(name: str, holders: Mapping[str, OwnDataset]) -> NamedData:
    """One name's majority schema (a tie: more training samples, then the smaller schema)."""
    votes: dict[Schema, list[str]] = {}
    for node_id, dataset in holders.items():
        votes.setdefault(Schema.of(dataset), []).append(node_id)

    def strength(schema: Schema) -> tuple[int, int]:
        nodes = votes[schema]
        return len(nodes), sum(holders[n].train_samples for n in nodes)

    best = max(strength(s) for s in votes)
    schema = min(s for s in votes if strength(s) == best)
    agreeing = {n: holders[n] for n in sorted(votes[schema])}
    left_out = {
        n: schema.differs(Schema.of(d)) for n, d in sorted(holders.items()) if n not in agreeing
    }
    return NamedData(name, schema, agreeing, left_out)
