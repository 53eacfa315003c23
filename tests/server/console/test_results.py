"""A run's results to take away: the record, its CSV and its plot."""

from __future__ import annotations

import csv
import io
from typing import Any

from PIL import Image

from server.console.results import GLOBAL, csv_text, per_node, plot_png, run_record

RUN = "mnist-20261201T120000Z-abcd"
HISTORY = [
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


def test_the_plot_is_a_png_of_exactly_the_size_asked() -> None:
    image = Image.open(io.BytesIO(plot_png(record(), 640, 480)))
    assert image.format == "PNG" and image.size == (640, 480)
