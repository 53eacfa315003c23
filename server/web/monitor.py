"""The monitoring views behind ``/monitor/*``: the run at a glance, per-node detail, timeline.

Read-only projections of the federation's live state and the SQLite history; they share
their field names with the dashboard's events so one client model fits both.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from server.federation import Federation

NODES_MAX = 5000  # per-node detail rows at most: the registry is bounded, this bounds the page


def overview(fed: Federation) -> dict[str, Any]:
    status = fed.status()
    connected = len(fed.registry.connected())
    run: dict[str, Any] = {k: v for k, v in status.items() if k != "history"}
    history = status.get("history", [])
    rounds, closed = status.get("rounds", 0), len(history)
    durations = [h["seconds"] for h in history]
    in_round = 0.0
    if status.get("round_open") and status.get("expected"):
        in_round = len(status.get("received", [])) / len(status["expected"])
    remaining = max(0, rounds - closed)
    speeds = _node_speeds(fed, status.get("run_id"))
    return {
        "run": run,
        "progress": {
            "rounds_closed": closed,
            "rounds": rounds,
            "fraction": (closed + in_round) / rounds if rounds else 0.0,
        },
        "eta_s": mean(durations) * remaining
        if durations and status["state"] == "running"
        else None,
        "metrics": [
            {
                k: h[k]
                for k in (
                    "round",
                    "test_accuracy",
                    "test_loss",
                    "partial",
                    "seconds",
                    "contributors",
                )
            }
            for h in history
        ],
        "nodes": {"connected": connected, "known": len(fed.registry.nodes)},
        "fastest_node": speeds[0] if speeds else None,
        "slowest_node": speeds[-1] if speeds else None,
    }


def _node_speeds(fed: Federation, run_id: str | None) -> list[dict[str, Any]]:
    """Nodes by mean local-epoch seconds in this run (fastest first); capacity when none yet."""
    per_node: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    if run_id:
        for row in fed.store.node_metrics(run_id):
            if "seconds" in row["metrics"]:
                per_node.setdefault(row["node_id"], []).append(row["metrics"]["seconds"])
                names[row["node_id"]] = row["node_name"]
    if per_node:
        ranked = sorted(per_node.items(), key=lambda item: mean(item[1]))
        return [
            {"node_id": n, "name": names[n], "mean_round_seconds": mean(s), "rounds": len(s)}
            for n, s in ranked
        ]
    connected = sorted(fed.registry.connected(), key=lambda s: -s.capacity)
    return [{"node_id": s.node_id, "name": s.name, "capacity": s.capacity} for s in connected]


def node_details(fed: Federation) -> dict[str, Any]:
    """Each node's row (with ``evaluation``, its latest reading in the job) and, for the
    run, its per-round training metrics (``history``) and its readings of each round's
    global model on its own test split (``evaluations``, a job over the nodes' own data)."""
    run_id = fed.status().get("run_id")
    history: dict[str, list[dict[str, Any]]] = {}
    evaluations: dict[str, list[dict[str, Any]]] = {}
    if run_id:
        for row in fed.store.node_metrics(run_id):
            history.setdefault(row["node_id"], []).append(
                {"round": row["round"], "samples": row["samples"], **row["metrics"]}
            )
        for row in fed.store.node_evaluation_rows(run_id):
            evaluations.setdefault(row["node_id"], []).append(
                {k: row[k] for k in ("round", "accuracy", "loss", "samples")}
            )
    missed: dict[str, int] = {}
    for h in fed.status().get("history", []):
        for name in h["missing"]:
            missed[name] = missed.get(name, 0) + 1
    return {
        "run_id": run_id,
        "nodes": [
            {
                **view,
                "history": history.get(view["node_id"], []),
                "evaluations": evaluations.get(view["node_id"], []),
                "rounds_missed": missed.get(view["name"], 0),
            }
            for view in fed.nodes(limit=NODES_MAX)[0]
        ],
    }


def timeline(fed: Federation, limit: int) -> dict[str, Any]:
    return {"events": fed.store.events(limit=limit)}
