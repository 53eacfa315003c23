"""The long-lived services a job works with, handed to it (and its parts) by the federation."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.core.sampling import EVERYONE, Sampling
from server.events import EventBus
from server.job.best import DEFAULT_BEST_METRIC
from server.metrics import Metrics
from server.registry import NodeRegistry
from server.store import Store


@dataclass(frozen=True, slots=True)
class JobContext:
    """The long-lived services a job works with."""

    store: Store
    bus: EventBus
    registry: NodeRegistry
    runs_dir: Path
    models_dir: Path
    aggregation: str
    deadline_s: float
    metrics: Metrics
    background: Executor
    upload_slots: int = 4
    max_upload_bytes: int = 512 << 20  # the operator's cap; a job's own limit is its model's size
    max_update_ratio: float = 10.0
    max_missed_rounds: int = 2
    # The server optimizer after each round's combine (its config; "none" is FedAvg).
    server_opt: Mapping[str, Any] = field(default_factory=lambda: {"strategy": "none"})
    best_metric: str = DEFAULT_BEST_METRIC  # the saved best round's metric (server.job.best)
    sampling: Sampling = EVERYONE  # which of the connected participants each round trains
    clock: Callable[[], float] = time.time


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where a job's samples are: ``shards``, the server's, shipped to the nodes; ``local``,
    each node's own, never sent. ``test_set`` is the prepared dataset whose test split the
    server evaluates each round on (None: only the nodes evaluate, on theirs); ``left_out``,
    the nodes whose own data is not the majority's schema, each with why."""

    mode: Literal["shards", "local"] = "shards"
    test_set: str | None = None
    left_out: Mapping[str, str] = field(default_factory=dict)


SHARDS = DataSource()
