"""Prometheus metrics: one registry per app, fed by the event bus and a few handler hooks.

Served at ``/metrics`` in the classic text format (``promtool check metrics`` accepts it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.events import Event

ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.nodes_connected = Gauge(
            "fedavg_nodes_connected", "Nodes with a live socket.", registry=r
        )
        self.dashboard_clients = Gauge(
            "fedavg_dashboard_clients", "Dashboard sockets subscribed to events.", registry=r
        )
        self.training_active = Gauge(
            "fedavg_training_active", "1 while a job is running.", registry=r
        )
        self.rounds_completed = Counter(
            "fedavg_rounds_completed", "Rounds closed (all uploads in, or partial).", registry=r
        )
        self.partial_rounds = Counter(
            "fedavg_partial_rounds",
            "Rounds closed at the deadline with a partial average.",
            registry=r,
        )
        self.stragglers = Counter(
            "fedavg_stragglers", "Expected uploads missing when a round closed.", registry=r
        )
        self.uploads_accepted = Counter("fedavg_uploads_accepted", "Uploads folded in.", registry=r)
        self.uploads_rejected = Counter(
            "fedavg_uploads_rejected", "Uploads refused, by reason.", ["reason"], registry=r
        )
        self.round_duration = Histogram(
            "fedavg_round_duration_seconds",
            "Round open to close.",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.aggregation_duration = Histogram(
            "fedavg_aggregation_duration_seconds",
            "Folding one upload into the running sum.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.evaluation_duration = Histogram(
            "fedavg_evaluation_duration_seconds",
            "Evaluating a global model on the test split.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.bytes_received = Counter(
            "fedavg_bytes_received", "Request bytes received, by kind.", ["kind"], registry=r
        )
        self.bytes_sent = Counter(
            "fedavg_bytes_sent", "File bytes served, by kind.", ["kind"], registry=r
        )
        self.global_accuracy = Gauge(
            "fedavg_global_accuracy", "Test accuracy of the latest global model.", registry=r
        )
        self.global_loss = Gauge(
            "fedavg_global_loss", "Test loss of the latest global model.", registry=r
        )
        self.current_round = Gauge("fedavg_current_round", "The open (or last) round.", registry=r)
        self.connections_refused = Counter(
            "fedavg_connections_refused",
            "Connections closed at the door: a cap was reached, or the first request head "
            "took longer than FEDAVG_HEADER_TIMEOUT.",
            ["reason"],
            registry=r,
        )
        self.hellos_refused = Counter(
            "fedavg_node_hellos_refused",
            "Node hellos refused, by reason (id_taken: the id is bound to another secret).",
            ["reason"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "fedavg_node_frames_dropped",
            "Node frames dropped unread or unapplied, by reason (rate, wrong_job, wrong_round).",
            ["reason"],
            registry=r,
        )
        self.sockets_cut = Counter(
            "fedavg_node_sockets_cut",
            "Node sockets the server closed for misbehaving, by reason (flood).",
            ["reason"],
            registry=r,
        )

    def on_event(self, event: Event) -> None:
        data = event.data
        match event.kind:
            case "job_started":
                self.training_active.set(1)
                self.current_round.set(0)
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
                self.global_accuracy.set(data["test_accuracy"])
                self.global_loss.set(data["test_loss"])
                if data["partial"]:
                    self.partial_rounds.inc()

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason=reason).inc()

    def render(self, *, nodes_connected: int, dashboard_clients: int) -> bytes:
        """The scrape; gauges of live connections are read at scrape time, not counted."""
        self.nodes_connected.set(nodes_connected)
        self.dashboard_clients.set(dashboard_clients)
        return generate_latest(self.registry)
