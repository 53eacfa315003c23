"""Runs, rounds, per-node metrics and federated readings, node id bindings and the event
timeline in SQLite under FEDAVG_HOME.

Used from the event loop thread only; every write is one short transaction (WAL mode keeps
them in the millisecond range), committed before the effect it records is announced.

Two tables grow with what the network does, so both are bounded: the timeline keeps its
newest ``max_events`` rows (older runs' events go first; runs, rounds and metrics are never
trimmed), and the node id bindings keep the ``max_node_ids`` most recently seen. Both are
trimmed every so often, not on each insert, so each may overshoot its cap by one batch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.core.federated_eval import Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    dataset_source TEXT NOT NULL,
    status TEXT NOT NULL,
    rounds INTEGER NOT NULL,
    aggregation TEXT NOT NULL,
    model_spec TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    model_path TEXT,
    final_accuracy REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    round INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL NOT NULL,
    contributors TEXT NOT NULL,
    samples INTEGER NOT NULL,
    partial INTEGER NOT NULL,
    missing TEXT NOT NULL,
    test_accuracy REAL,
    test_loss REAL,
    checkpoint TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS node_metrics (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    node_name TEXT NOT NULL,
    samples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (run_id, round, node_id)
);
CREATE TABLE IF NOT EXISTS node_evaluations (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    node_name TEXT NOT NULL,
    samples INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    loss REAL,
    received_at REAL NOT NULL,
    PRIMARY KEY (run_id, round, node_id)
);
CREATE TABLE IF NOT EXISTS round_samples (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    nodes TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    run_id TEXT,
    node_id TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS node_ids (
    node_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS node_ids_seen ON node_ids(last_seen);
"""
TRIM_EVERY = 1000  # inserts between two trims of a bounded table (at most)


@dataclass(frozen=True, slots=True)
class RoundRow:
    run_id: str
    round: int
    opened_at: float
    closed_at: float
    contributors: list[str]
    samples: int
    partial: bool
    missing: list[str]
    test_accuracy: float | None
    test_loss: float | None
    checkpoint: str
    sha256: str


class Store:
    def __init__(
        self, path: Path, *, max_events: int = 100_000, max_node_ids: int = 10_000
    ) -> None:
        self.max_events, self.max_node_ids = max_events, max_node_ids
        # A trim every tenth of the cap (at most TRIM_EVERY): cheap, and a small cap holds.
        self._trim_events_every = max(1, min(TRIM_EVERY, max_events // 10))
        self._trim_ids_every = max(1, min(TRIM_EVERY, max_node_ids // 10))
        self._events_since_trim = self._ids_since_trim = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: every commit survives a crash of this process (what a restart needs);
        # an OS crash may lose the last commits, which resume treats as rounds never closed.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create_run(self, **row: Any) -> None:
        row = {
            **row,
            "model_spec": json.dumps(row["model_spec"]),
            "config": json.dumps(row["config"]),
        }
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        self._db.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", row)

    def update_run(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        self._db.execute(
            f"UPDATE runs SET {sets} WHERE run_id = :run_id", {**fields, "run_id": run_id}
        )

    def runs(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,))
        return [_run_dict(r) for r in rows]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's row (as :meth:`runs` lists it), or None if there is no such run."""
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_dict(row) if row else None

    def record_round(self, row: RoundRow) -> None:
        data = {f: getattr(row, f) for f in RoundRow.__dataclass_fields__}
        data["contributors"] = json.dumps(row.contributors)
        data["missing"] = json.dumps(row.missing)
        data["partial"] = int(row.partial)
        cols = ", ".join(data)
        marks = ", ".join(f":{k}" for k in data)
        self._db.execute(f"INSERT OR REPLACE INTO rounds ({cols}) VALUES ({marks})", data)

    def rounds(self, run_id: str) -> list[RoundRow]:
        rows = self._db.execute("SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (run_id,))
        return [
            RoundRow(
                **{
                    **dict(r),
                    "contributors": json.loads(r["contributors"]),
                    "missing": json.loads(r["missing"]),
                    "partial": bool(r["partial"]),
                }
            )
            for r in rows
        ]

    def record_node_metrics(
        self,
        run_id: str,
        round_: int,
        node_id: str,
        node_name: str,
        samples: int,
        metrics: Mapping[str, float],
        received_at: float,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO node_metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, round_, node_id, node_name, samples, json.dumps(dict(metrics)), received_at),
        )

    def node_metrics(self, run_id: str, limit: int = -1, offset: int = 0) -> list[dict[str, Any]]:
        """A run's per-node rows by round, then node id; ``limit`` of them (-1: all) from
        ``offset`` on."""
        rows = self._db.execute(
            "SELECT * FROM node_metrics WHERE run_id = ? ORDER BY round, node_id LIMIT ? OFFSET ?",
            (run_id, limit, offset),
        )
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]

    def node_metrics_count(self, run_id: str) -> int:
        query = "SELECT COUNT(*) FROM node_metrics WHERE run_id = ?"
        return int(self._db.execute(query, (run_id,)).fetchone()[0])

    def record_round_sample(self, run_id: str, round_: int, nodes: list[str]) -> None:
        """The nodes client sampling picked for a round, as it opened (the first pick stays)."""
        self._db.execute(
            "INSERT OR IGNORE INTO round_samples VALUES (?, ?, ?)",
            (run_id, round_, json.dumps(sorted(nodes))),
        )

    def round_sample(self, run_id: str, round_: int) -> list[str] | None:
        row = self._db.execute(
            "SELECT nodes FROM round_samples WHERE run_id = ? AND round = ?", (run_id, round_)
        ).fetchone()
        return None if row is None else list(json.loads(row["nodes"]))

    def record_node_evaluation(
        self, run_id: str, reading: Reading, node_name: str, received_at: float
    ) -> None:
        """A node's federated reading of one round's model (counted: the first one only)."""
        self._db.execute(
            "INSERT OR IGNORE INTO node_evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                reading.round,
                reading.node_id,
                node_name,
                reading.samples,
                reading.correct,
                reading.loss,
                received_at,
            ),
        )

    def node_evaluations(self, run_id: str) -> list[Reading]:
        rows = self._db.execute(
            "SELECT * FROM node_evaluations WHERE run_id = ? ORDER BY round, node_id", (run_id,)
        )
        return [
            Reading(r["node_id"], r["round"], r["samples"], r["correct"], r["loss"]) for r in rows
        ]

    def node_evaluation_rows(
        self, run_id: str, limit: int = -1, offset: int = 0
    ) -> list[dict[str, Any]]:
        """A page of a run's federated readings as the API shows them, by round, then node
        id (``limit`` -1: all)."""
        rows = self._db.execute(
            "SELECT * FROM node_evaluations WHERE run_id = ? ORDER BY round, node_id "
            "LIMIT ? OFFSET ?",
            (run_id, limit, offset),
        )
        return [{**dict(r), "accuracy": r["correct"] / r["samples"]} for r in rows]

    def node_evaluations_count(self, run_id: str) -> int:
        query = "SELECT COUNT(*) FROM node_evaluations WHERE run_id = ?"
        return int(self._db.execute(query, (run_id,)).fetchone()[0])

    def add_event(
        self,
        ts: float,
        kind: str,
        data: Mapping[str, Any],
        run_id: str | None = None,
        node_id: str | None = None,
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO events (ts, kind, run_id, node_id, data) VALUES (?, ?, ?, ?, ?)",
            (ts, kind, run_id, node_id, json.dumps(dict(data))),
        )
        event_id = int(cur.lastrowid or 0)
        self._events_since_trim += 1
        if self._events_since_trim >= self._trim_events_every:
            self._events_since_trim = 0
            # Ids only grow (AUTOINCREMENT), so the newest rows are the top ids: one range
            # delete on the primary key, no count.
            self._db.execute("DELETE FROM events WHERE id <= ?", (event_id - self.max_events,))
        return event_id

    def event_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- node ids ------------------------------------------------------------------------------

    def node_secret_sha256(self, node_id: str) -> str | None:
        """The hash of the secret ``node_id`` is bound to, or None if it is free."""
        row = self._db.execute(
            "SELECT secret_sha256 FROM node_ids WHERE node_id = ?", (node_id,)
        ).fetchone()
        return str(row[0]) if row else None

    def bind_node_id(
        self,
        node_id: str,
        secret_sha256: str,
        now: float,
        keep: Callable[[], Collection[str]] = tuple,
    ) -> None:
        """Bind a free id to a secret's hash, or note that a bound one was seen again.

        Trimming drops the least recently seen bindings beyond ``max_node_ids``, except those
        ``keep()`` names (the connected nodes and the running job's participants; asked only
        when trimming): an id that is in use must never become free for the next comer.
        """
        cur = self._db.execute(
            "INSERT INTO node_ids VALUES (?, ?, ?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET last_seen = excluded.last_seen",
            (node_id, secret_sha256, now, now),
        )
        self._ids_since_trim += cur.rowcount
        if self._ids_since_trim >= self._trim_ids_every:
            self._ids_since_trim = 0
            self._db.executemany(
                "UPDATE node_ids SET last_seen = ? WHERE node_id = ?", ((now, n) for n in keep())
            )
            self._db.execute(
                "DELETE FROM node_ids WHERE node_id IN "
                "(SELECT node_id FROM node_ids ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
                (self.max_node_ids,),
            )

    def node_id_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM node_ids").fetchone()[0])

    def events(self, limit: int = 100, run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is None:
            rows = self._db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                "SELECT * FROM events WHERE run_id = ? ORDER BY id DESC LIMIT ?", (run_id, limit)
            )
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["model_spec"] = json.loads(data["model_spec"])
    data["config"] = json.loads(data["config"])
    return data
