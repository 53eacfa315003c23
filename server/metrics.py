"""Prometheus metrics: one registry per app, fed by the event bus and a few handler hooks.

Served at ``/metrics`` in the classic text format (``promtool check metrics`` accepts it).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.events import Event

# Per-node series are bounded: at most NODE_SERIES_MAX node label values, the least recently
# updated one removed when a new one would pass it, and all of them cleared when a job
# starts. Anyone with the join token can make up node names; each would be a series forever.
NODE_SERIES_MAX = 64
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The server's metric families, all in one registry (``render`` is the scrape)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.nodes_connected = _gauge(r, "fedavg_nodes_connected", "Nodes with a live socket.")
        self.dashboard_clients = _gauge(
            r, "fedavg_dashboard_clients", "Dashboard sockets subscribed to events."
        )
        self.training_active = _gauge(r, "fedavg_training_active", "1 while a job is running.")
        self.rounds_completed = _counter(
            r, "fedavg_rounds_completed", "Rounds closed (all uploads in, or partial)."
        )
        self.partial_rounds = _counter(
            r, "fedavg_partial_rounds", "Rounds closed at the deadline with a partial average."
        )
        self.stragglers = _counter(
            r, "fedavg_stragglers", "Expected uploads missing when a round closed."
        )
        self.uploads_accepted = _counter(r, "fedavg_uploads_accepted", "Uploads folded in.")
        self.uploads_rejected = _counter(
            r, "fedavg_uploads_rejected", "Uploads refused, by reason.", "reason"
        )
        self.round_duration = _histogram(
            r, "fedavg_round_duration_seconds", "Round open to close.", ROUND_BUCKETS
        )
        self.aggregation_duration = _histogram(
            r,
            "fedavg_aggregation_duration_seconds",
            "Folding one upload into the running sum.",
            FAST_BUCKETS,
        )
        self.evaluation_duration = _histogram(
            r,
            "fedavg_evaluation_duration_seconds",
            "Evaluating a global model on the test split.",
            FAST_BUCKETS,
        )
        self._add_transfers(r)
        self.global_accuracy = _gauge(
            r, "fedavg_global_accuracy", "Test accuracy of the latest global model."
        )
        self.global_loss = _gauge(r, "fedavg_global_loss", "Test loss of the latest global model.")
        self.current_round = _gauge(r, "fedavg_current_round", "The open (or last) round.")
        self._add_refusals(r)
        self._add_federated(r)

    def _add_transfers(self, r: CollectorRegistry) -> None:
        """What travels over HTTP: bytes each way, and the file requests, by kind."""
        self.bytes_received = _counter(
            r, "fedavg_bytes_received", "Request bytes received, by kind.", "kind"
        )
        self.bytes_sent = _counter(r, "fedavg_bytes_sent", "File bytes served, by kind.", "kind")
        self.file_requests = _counter(
            r,
            "fedavg_file_requests",
            "Requests for shards and weights, answered or refused, by kind.",
            "kind",
        )
        for kind in ("shard", "weights"):  # 0 from the start: a count that never moves shows
            self.file_requests.labels(kind=kind)

    def _add_federated(self, r: CollectorRegistry) -> None:
        """The nodes' readings of the global model on their own test splits (own-data jobs)."""
        self.node_test_accuracy = Gauge(
            "fedavg_node_test_accuracy",
            "A node's latest accuracy of a global model on its own test split, by node name "
            f"(at most {NODE_SERIES_MAX} names, cleared when a job starts).",
            ["node"],
            registry=r,
        )
        self.node_test_loss = Gauge(
            "fedavg_node_test_loss",
            "A node's latest loss of a global model on its own test split, by node name.",
            ["node"],
            registry=r,
        )
        self.federated_accuracy = _gauge(
            r,
            "fedavg_federated_test_accuracy",
            "The nodes' weighted mean test accuracy of the latest round they reported on.",
        )
        self.federated_loss = _gauge(
            r,
            "fedavg_federated_test_loss",
            "The nodes' weighted mean test loss of the latest round they reported on.",
        )
        self._node_series: dict[str, None] = {}  # node names with series, least recent first
        self._federated_run: str | None = None  # the run and round the mean is of
        self._federated_round = -1
        self._clear_federated()

    def _add_refusals(self, r: CollectorRegistry) -> None:
        """The counters of what the server turned away, each by reason."""
        self.connections_refused = _counter(
            r,
            "fedavg_connections_refused",
            "Connections closed at the door: a cap was reached, or the first request head "
            "took longer than FEDAVG_HEADER_TIMEOUT.",
            "reason",
        )
        self.hellos_refused = _counter(
            r,
            "fedavg_node_hellos_refused",
            "Node hellos refused, by reason (id_taken: the id is bound to another secret).",
            "reason",
        )
        self.frames_dropped = _counter(
            r,
            "fedavg_node_frames_dropped",
            "Node frames dropped unread or unapplied, by reason (rate, wrong_job, wrong_round).",
            "reason",
        )
        self.sockets_cut = _counter(
            r,
            "fedavg_node_sockets_cut",
            "Node sockets the server closed for misbehaving, by reason (flood).",
            "reason",
        )

    def on_event(self, event: Event) -> None:
        data = event.data
        match event.kind:
            case "job_started":
                self.training_active.set(1)
                self.current_round.set(0)
                self._clear_federated()
            case "job_done" | "job_failed" | "job_stopped":
                self.training_active.set(0)
            case "round_opened":
                self.current_round.set(data["round"])
            case "upload_accepted":
                self.uploads_accepted.inc()
            case "straggler":
                self.stragglers.inc()
            case "round_closed":
                self.rounds_completed.inc()
                self.round_duration.observe(data["seconds"])
                self.global_accuracy.set(_number(data["test_accuracy"]))
                self.global_loss.set(_number(data["test_loss"]))
                if data["partial"]:
                    self.partial_rounds.inc()
                self._show_federated(data.get("federated"), event.run_id)
            case "node_evaluated":
                self._show_node(data["name"], data["accuracy"], data["loss"])
                self._show_federated(data["federated"], event.run_id)

    def _show_node(self, name: str, accuracy: float, loss: float | None) -> None:
        self._node_series.pop(name, None)
        self._node_series[name] = None  # now the most recent
        if len(self._node_series) > NODE_SERIES_MAX:
            stale = next(iter(self._node_series))
            del self._node_series[stale]
            self.node_test_accuracy.remove(stale)
            self.node_test_loss.remove(stale)
        self.node_test_accuracy.labels(node=name).set(accuracy)
        self.node_test_loss.labels(node=name).set(_number(loss))

    def _show_federated(self, summary: dict[str, Any] | None, run_id: str | None) -> None:
        """The weighted mean of the newest round reported on in a run (a late report of an
        older round's model does not take the gauges back; another run's, e.g. an
        evaluation-only job's round 0, is newer)."""
        if summary is None:
            return
        if run_id == self._federated_run and summary["round"] < self._federated_round:
            return
        self._federated_run, self._federated_round = run_id, summary["round"]
        self.federated_accuracy.set(summary["accuracy"])
        self.federated_loss.set(_number(summary["loss"]))

    def _clear_federated(self) -> None:
        self.node_test_accuracy.clear()
        self.node_test_loss.clear()
        self._node_series.clear()
        self._federated_run, self._federated_round = None, -1
        self.federated_accuracy.set(math.nan)
        self.federated_loss.set(math.nan)

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason=reason).inc()

    def render(self, *, nodes_connected: int, dashboard_clients: int) -> bytes:
        """The scrape; gauges of live connections are read at scrape time, not counted."""
        self.nodes_connected.set(nodes_connected)
        self.dashboard_clients.set(dashboard_clients)
        return generate_latest(self.registry)


def _number(value: float | None) -> float:
    """A gauge's value for a figure that may be missing (no server test set, a loss that was
    not finite): NaN, which the text format writes and promtool accepts."""
    return math.nan if value is None else value


def _gauge(registry: CollectorRegistry, name: str, documentation: str) -> Gauge:
    return Gauge(name, documentation, registry=registry)


def _counter(registry: CollectorRegistry, name: str, documentation: str, *labels: str) -> Counter:
    return Counter(name, documentation, labels, registry=registry)


def _histogram(
    registry: CollectorRegistry, name: str, documentation: str, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(name, documentation, buckets=buckets, registry=registry)
