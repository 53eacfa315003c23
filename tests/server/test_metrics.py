"""The Prometheus metrics of federated evaluation, fed by real events through a real bus: the
per-node gauges and their bound, the weighted mean, and rounds with no server test set."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.events import EventBus
from server.metrics import NODE_SERIES_MAX, Metrics
from server.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "fedavg.sqlite3")
    yield store
    store.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def bus(store: Store, metrics: Metrics) -> EventBus:
    bus = EventBus(store, lambda: 100.0)
    bus.listen(metrics.on_event)
    return bus


class Reports:
    """Node reports of one job as the server announces them: each ``node_evaluated`` with the
    running weighted mean of its round (the sums of the reports so far)."""

    def __init__(self, bus: EventBus, run_id: str = "run-1") -> None:
        self.bus, self.run_id = bus, run_id
        # round -> [samples, correct, samples with a loss, their loss * samples]
        self.sums: dict[int, list[float]] = {}

    def report(
        self, name: str, round_: int, samples: int, correct: int, loss: float | None
    ) -> None:
        sums = self.sums.setdefault(round_, [0, 0, 0, 0.0])
        sums[0] += samples
        sums[1] += correct
        if loss is not None:
            sums[2] += samples
            sums[3] += loss * samples
        federated = {
            "round": round_,
            "accuracy": sums[1] / sums[0],
            "loss": sums[3] / sums[2] if sums[2] else None,
            "samples": sums[0],
            "nodes": 0,  # not read by the metrics
        }
        data = {
            "round": round_,
            "name": name,
            "samples": samples,
            "correct": correct,
            "accuracy": correct / samples,
            "loss": loss,
            "federated": federated,
        }
        self.bus.publish("node_evaluated", data, run_id=self.run_id, node_id=f"id-{name}")


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scrape, parsed back: (series name, labels) -> value."""
    text = metrics.render(nodes_connected=0, dashboard_clients=0).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def node_values(metrics: Metrics, name: str) -> dict[str, float]:
    """``fedavg_node_test_<name>``'s value for each node label."""
    return {
        dict(labels)["node"]: value
        for (series, labels), value in scrape(metrics).items()
        if series == f"fedavg_node_test_{name}"
    }


def start_job(bus: EventBus, run_id: str = "run-1") -> None:
    bus.publish("job_started", {"dataset": "mnist-local", "rounds": 3}, run_id=run_id)


def closed(round_: int, test_accuracy: float | None, **changes: Any) -> dict[str, Any]:
    data = {
        "round": round_,
        "seconds": 2.0,
        "test_accuracy": test_accuracy,
        "test_loss": None if test_accuracy is None else 1 - test_accuracy,
        "partial": False,
        "contributors": ["a", "b"],
        "federated": None,
    }
    return {**data, **changes}


def test_each_node_has_its_latest_reading_and_the_job_its_weighted_mean(
    bus: EventBus, metrics: Metrics
) -> None:
    start_job(bus)
    reports = Reports(bus)
    reports.report("a", 0, samples=100, correct=20, loss=2.0)
    reports.report("b", 0, samples=300, correct=30, loss=2.4)
    reports.report("a", 1, samples=100, correct=70, loss=0.9)
    assert node_values(metrics, "accuracy") == {"a": 0.7, "b": 0.1}
    assert node_values(metrics, "loss") == {"a": 0.9, "b": 2.4}
    # Round 1's mean so far is a's alone; b's round-1 reading then weighs in 3 to 1.
    assert scrape(metrics)[("fedavg_federated_test_accuracy", ())] == 0.7
    reports.report("b", 1, samples=300, correct=240, loss=0.5)
    values = scrape(metrics)
    assert values[("fedavg_federated_test_accuracy", ())] == pytest.approx(310 / 400)
    assert values[("fedavg_federated_test_loss", ())] == pytest.approx((90 + 150) / 400)


def test_a_late_reading_of_an_older_model_does_not_take_the_mean_back(
    bus: EventBus, metrics: Metrics
) -> None:
    start_job(bus)
    reports = Reports(bus)
    reports.report("a", 2, samples=100, correct=90, loss=0.3)
    reports.report("b", 1, samples=100, correct=50, loss=1.0)  # a straggler's, of round 1
    assert scrape(metrics)[("fedavg_federated_test_accuracy", ())] == 0.9
    assert node_values(metrics, "accuracy") == {"a": 0.9, "b": 0.5}  # its own latest, still
    # An evaluation-only job afterwards: its round 0 (a saved model) is the newest reading.
    Reports(bus, "eval-1").report("a", 0, samples=100, correct=40, loss=1.2)
    assert scrape(metrics)[("fedavg_federated_test_accuracy", ())] == 0.4


def test_node_series_are_bounded_and_the_least_recently_updated_goes_first(
    bus: EventBus, metrics: Metrics
) -> None:
    start_job(bus)
    reports = Reports(bus)
    names = [f"n{i:03d}" for i in range(NODE_SERIES_MAX + 5)]
    for i, name in enumerate(names):
        reports.report(name, 1, samples=10, correct=i % 11, loss=1.0)
        if name == "n010":
            reports.report("n000", 2, samples=10, correct=10, loss=0.1)  # n000 updated again
    kept = node_values(metrics, "accuracy")
    assert len(kept) == NODE_SERIES_MAX
    assert set(node_values(metrics, "loss")) == set(kept)
    # Five went, the oldest updates first: n001..n005 (n000 was updated since).
    assert set(names) - set(kept) == {"n001", "n002", "n003", "n004", "n005"}
    assert kept["n000"] == 1.0


def test_a_new_job_starts_with_no_node_series_and_no_mean(bus: EventBus, metrics: Metrics) -> None:
    start_job(bus)
    Reports(bus).report("a", 3, samples=10, correct=9, loss=0.2)
    start_job(bus, "run-2")
    values = scrape(metrics)
    assert node_values(metrics, "accuracy") == {}
    assert math.isnan(values[("fedavg_federated_test_accuracy", ())])
    assert math.isnan(values[("fedavg_federated_test_loss", ())])
    Reports(bus).report("b", 0, samples=10, correct=1, loss=2.2)  # round 0 counts again
    assert scrape(metrics)[("fedavg_federated_test_accuracy", ())] == 0.1


def test_a_round_with_no_server_test_set_still_counts_and_shows_no_number(
    bus: EventBus, metrics: Metrics
) -> None:
    start_job(bus)
    bus.publish("round_closed", closed(1, 0.8, partial=True), run_id="run-1")
    summary = {"round": 2, "accuracy": 0.75, "loss": None, "samples": 40, "nodes": 2}
    bus.publish("round_closed", closed(2, None, partial=True, federated=summary), run_id="run-1")
    values = scrape(metrics)
    assert values[("fedavg_rounds_completed_total", ())] == 2
    assert values[("fedavg_partial_rounds_total", ())] == 2
    assert math.isnan(values[("fedavg_global_accuracy", ())])
    assert math.isnan(values[("fedavg_global_loss", ())])
    assert values[("fedavg_federated_test_accuracy", ())] == 0.75
    assert math.isnan(values[("fedavg_federated_test_loss", ())])


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool missing: apt-get install prometheus (./dev test does, as root)",
)
def test_promtool_accepts_the_node_series_and_missing_figures(
    bus: EventBus, metrics: Metrics, tmp_path: Path
) -> None:
    start_job(bus)
    Reports(bus).report('node "7"\\ é', 0, samples=10, correct=3, loss=None)  # not finite
    bus.publish("round_closed", closed(1, None), run_id="run-1")
    path = tmp_path / "scrape.txt"
    path.write_bytes(metrics.render(nodes_connected=1, dashboard_clients=0))
    with path.open("rb") as scrape_file:
        result = subprocess.run(
            ["promtool", "check", "metrics"], stdin=scrape_file, capture_output=True, timeout=30
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert node_values(metrics, "accuracy") == {'node "7"\\ é': 0.3}
    assert math.isnan(node_values(metrics, "loss")['node "7"\\ é'])
