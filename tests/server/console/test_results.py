"""A run's results to take away: the record, its CSV and its plot."""

from __future__ import annotations

import csv
import io
from typing import Any

from PIL import Image

from server.console.results import (
    FEDERATED_COLUMNS,
    FEDERATED_LABEL,
    GLOBAL,
    SERVER_LABEL,
    csv_text,
    global_lines,
    per_node,
    plot_png,
    run_record,
)

RUN = "mnist-20261201T120000Z-abcd"
HISTORY: list[dict[str, Any]] = [
    {
        "round": r,
        "contributors": ["a", "b"],
        "samples": 100,
        "partial": False,
        "missing": [],
        "test_accuracy": 0.5 + r / 10,
        "test_loss": 1.0 / r,
        "seconds": 0.5,
    }
    for r in (1, 2)
]
RUN_ROW = {"run_id": RUN, "status": "completed"}
# GET /runs/{run_id}'s per-node rows, in the server's order (round, then node id).
NODE_ROWS = [
    {
        "round": r,
        "node_id": f"id-{name}",
        "name": name,
        "samples": 50,
        "metrics": {"train_loss": 0.9 / r, "train_accuracy": 0.6, "val_accuracy": 0.7},
        "received_at": 10.0 + r,
    }
    for r in (1, 2)
    for name in ("b", "a")
]


def record() -> dict[str, Any]:
    answer = {"run": RUN_ROW, "rounds": HISTORY, "nodes": NODE_ROWS[:2], "nodes_total": 4}
    return run_record(answer, NODE_ROWS)


def test_the_record_holds_the_rounds_and_each_node_row_in_round_order() -> None:
    rec = record()
    assert rec["run"] == RUN_ROW
    assert rec["rounds"] == HISTORY
    assert [(n["round"], n["node"]) for n in rec["nodes"]] == [
        (1, "a"),
        (1, "b"),
        (2, "a"),
        (2, "b"),
    ]
    assert rec["nodes"][0] == {
        "node": "a",
        "node_id": "id-a",
        "round": 1,
        "samples": 50,
        "train_loss": 0.9,
        "train_accuracy": 0.6,
        "val_accuracy": 0.7,
    }
    assert per_node(rec["nodes"], "train_loss")["a"] == [(1, 0.9), (2, 0.45)]


def test_the_csv_has_a_global_row_per_round_then_a_row_per_node_and_round() -> None:
    rows = list(csv.DictReader(io.StringIO(csv_text(record()))))
    assert [(r["round"], r["scope"]) for r in rows] == [
        ("1", GLOBAL),
        ("2", GLOBAL),
        ("1", "a"),
        ("1", "b"),
        ("2", "a"),
        ("2", "b"),
    ]
    assert rows[0]["contributors"] == "a;b" and float(rows[1]["test_accuracy"]) == 0.7
    assert rows[2]["train_loss"] == "0.9" and rows[2]["test_accuracy"] == ""
    assert {r["run_id"] for r in rows} == {RUN}
    assert not set(FEDERATED_COLUMNS) & set(rows[0])  # a shards run has no federated reading


def test_the_plot_is_a_png_of_exactly_the_size_asked() -> None:
    image = Image.open(io.BytesIO(plot_png(record(), 640, 480)))
    assert image.format == "PNG" and image.size == (640, 480)


# A run over the nodes' own data with no server test split: each round's federated reading.
LOCAL_HISTORY = [
    {
        **h,
        "test_accuracy": None,
        "test_loss": None,
        "federated": {
            "round": h["round"],
            "accuracy": 0.6 + h["round"] / 10,
            "loss": 0.9,
            "samples": 80,
            "nodes": 2,
        },
    }
    for h in HISTORY
]
READINGS = [  # GET /runs/{run_id}'s evaluations, by round then node id
    {
        "run_id": RUN,
        "round": r,
        "node_id": f"id-{name}",
        "node_name": name,
        "samples": 40,
        "correct": 30,
        "loss": 0.9,
        "accuracy": 0.75,
        "received_at": 1.0,
    }
    for r in (0, 1)
    for name in ("b", "a")
]


def local_record() -> dict[str, Any]:
    answer = {"run": RUN_ROW, "rounds": LOCAL_HISTORY, "nodes": NODE_ROWS, "nodes_total": 4}
    return run_record(answer, NODE_ROWS, READINGS)


def test_a_local_runs_csv_has_the_federated_reading_after_the_test_columns() -> None:
    text = csv_text(local_record())
    header = text.splitlines()[0].split(",")
    at = header.index("test_loss") + 1
    assert header[at : at + 3] == list(FEDERATED_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (rows[1]["scope"], rows[1]["test_accuracy"], rows[1]["federated_accuracy"]) == (
        GLOBAL,
        "",
        "0.8",
    )
    assert rows[0]["federated_nodes"] == "2" and rows[2]["federated_accuracy"] == ""


def test_the_record_keeps_the_nodes_readings_in_round_then_name_order() -> None:
    readings = local_record()["evaluations"]
    assert [(e["round"], e["node_name"]) for e in readings] == [
        (0, "a"),
        (0, "b"),
        (1, "a"),
        (1, "b"),
    ]
    assert record()["evaluations"] == []


def test_the_global_lines_are_those_the_run_has() -> None:
    assert global_lines(HISTORY, "accuracy") == {SERVER_LABEL: [(1, 0.6), (2, 0.7)]}
    assert global_lines(LOCAL_HISTORY, "accuracy") == {FEDERATED_LABEL: [(1, 0.7), (2, 0.8)]}
    both = [{**h, "test_loss": 1.0} for h in LOCAL_HISTORY]
    assert global_lines(both, "loss") == {
        SERVER_LABEL: [(1, 1.0), (2, 1.0)],
        FEDERATED_LABEL: [(1, 0.9), (2, 0.9)],
    }
    assert FEDERATED_LABEL == "federated (nodes' test splits)"


def test_a_local_run_without_server_test_accuracy_plots() -> None:
    image = Image.open(io.BytesIO(plot_png(local_record(), 640, 480)))
    assert image.format == "PNG" and image.size == (640, 480)
