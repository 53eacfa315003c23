"""The server's W&B run of a job over the nodes' own data: real events through a real bus into
a real offline W&B run, read back from its run file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.shared.wandb_sink import WandbSink
from server.events import EventBus
from server.store import Store
from server.wandb_log import NODE_KEYS_MAX, ServerWandb
from tests.system.wandb_records import history

pytestmark = pytest.mark.slow  # an offline W&B run starts W&B's own core process


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[EventBus, WandbSink]]:
    store = Store(tmp_path / "fedavg.sqlite3")
    sink = WandbSink("offline", "fedavg-test", tmp_path / "wandb")
    bus = EventBus(store, lambda: 100.0)
    bus.listen(ServerWandb(sink).on_event)
    yield bus, sink  # the test closes the sink: W&B writes the run's end then
    store.close()


def evaluated(
    bus: EventBus,
    name: str,
    round_: int,
    correct: int,
    federated: dict[str, Any],
    run_id: str = "run-w",
) -> None:
    data = {
        "round": round_,
        "name": name,
        "samples": 100,
        "correct": correct,
        "accuracy": correct / 100,
        "loss": 1 - correct / 100,
        "federated": federated,
    }
    bus.publish("node_evaluated", data, run_id=run_id, node_id=f"id-{name}")


def summary(round_: int, correct: int, nodes: int) -> dict[str, Any]:
    """The round's weighted mean over ``nodes`` readings of 100 samples that got ``correct``."""
    samples = 100 * nodes
    return {
        "round": round_,
        "accuracy": correct / samples,
        "loss": 1 - correct / samples,
        "samples": samples,
        "nodes": nodes,
    }


def closed(round_: int) -> dict[str, Any]:
    """A round of a job with no server test set: no test accuracy, no loss."""
    return {
        "round": round_,
        "test_accuracy": None,
        "test_loss": None,
        "seconds": 1.5,
        "contributors": ["a", "b"],
        "partial": False,
        "federated": None,  # the nodes read this round's model once they have it
    }


def test_federated_figures_go_to_their_rounds_step_and_node_keys_are_bounded(
    bus: tuple[EventBus, WandbSink], tmp_path: Path
) -> None:
    events, sink = bus
    events.publish("job_started", {"dataset": "mnist-local", "rounds": 2}, run_id="run-w")
    evaluated(events, "e", 0, 50, summary(0, 50, 1), run_id="eval-1")  # another job's
    evaluated(events, "a", 0, 10, summary(0, 10, 1))
    evaluated(events, "b", 0, 12, summary(0, 22, 2))
    events.publish("round_closed", closed(1), run_id="run-w")
    evaluated(events, "a", 1, 60, summary(1, 60, 1))
    evaluated(events, "b", 1, 80, summary(1, 140, 2))
    events.publish("round_closed", closed(2), run_id="run-w")
    evaluated(events, "c", 1, 99, summary(1, 239, 3))  # late: step 2 is logged already
    many = [f"n{i:02d}" for i in range(NODE_KEYS_MAX + 2)]  # the final model's readings
    for i, name in enumerate(many):
        evaluated(events, name, 2, 90, summary(2, 90 * (i + 1), i + 1))
    events.publish("job_done", {"status": "completed"}, run_id="run-w")
    sink.close()

    (run_file,) = (tmp_path / "wandb").rglob("offline-run-*/run-*.wandb")
    rows = {row["_step"]: row for row in history(run_file)}
    assert sorted(rows) == [0, 1, 2]
    # Each step holds its round's mean over every reading that came in time.
    assert rows[0]["federated/accuracy"] == pytest.approx(0.11)
    assert rows[0]["federated/samples"] == 200
    assert rows[1]["federated/accuracy"] == pytest.approx(0.7)
    assert rows[1]["federated/nodes"] == 2
    assert rows[1]["nodes/a/test_accuracy"] == 0.6 and rows[1]["nodes/b/test_accuracy"] == 0.8
    assert "nodes/c/test_accuracy" not in rows[1]
    assert rows[2]["federated/nodes"] == NODE_KEYS_MAX + 2
    assert rows[2]["federated/accuracy"] == pytest.approx(0.9)
    # No server test set: the round's figures are there, its missing test accuracy is not.
    assert rows[2]["round/seconds"] == 1.5 and "global/test_accuracy" not in rows[2]
    # Node keys: a and b, then the first NODE_KEYS_MAX - 2 of the final readings.
    named = {key.split("/")[1] for row in rows.values() for key in row if key.startswith("nodes/")}
    assert named == {"a", "b", *many[: NODE_KEYS_MAX - 2]}
