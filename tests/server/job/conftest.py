"""A job's services over real SQLite and files in tmp_path, for tests of job parts without
a server. The clock stands still, so no deadline ever fires unless a test moves it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.shared.model import ModelSpec
from server.events import EventBus
from server.job.context import JobContext
from server.metrics import Metrics
from server.registry import NodeRegistry
from server.store import Store

SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)
NOW = 500.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "fedavg.sqlite3")
    yield store
    store.close()


@pytest.fixture
def ctx(tmp_path: Path, store: Store) -> Iterator[JobContext]:
    background = ThreadPoolExecutor(max_workers=1)
    yield JobContext(
        store=store,
        bus=EventBus(store, lambda: NOW),
        registry=NodeRegistry(),
        runs_dir=tmp_path / "runs",
        models_dir=tmp_path / "models",
        aggregation="weighted",
        deadline_s=30.0,
        metrics=Metrics(),
        background=background,
        clock=lambda: NOW,
    )
    background.shutdown()
