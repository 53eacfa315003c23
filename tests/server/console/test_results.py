"""A run's results to take away: the record, its CSV and its plot."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from PIL import Image

from server.console.errors import Refused
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
DETAILS = {
    "run_id": RUN,
    "nodes": [
        {
            "node_id": f"id-{name}",
            "name": name,
            "history": [
                {
                    "round": r,
                    "samples": 50,
                    "train_loss": 0.9 / r,
                    "train_accuracy": 0.6,
                    "val_accuracy": 0.7,
                    "seconds": 0.4,
                }
                for r in (2, 1)
            ],
        }
        for name in ("b", "a")
    ],
}


def record() -> dict[str, Any]:
    status = {"run_id": RUN, "state": "completed", "history": HISTORY}
    return run_record(RUN, status, DETAILS, [{"run_id": RUN, "status": "completed"}])


def test_the_record_holds_the_rounds_and_each_node_row_in_round_order() -> None:
    rec = record()
    assert rec["run"] == {"run_id": RUN, "status": "completed"}
    assert rec["rounds"] == HISTORY
    assert [(n["round"], n["node"]) for n in rec["nodes"]] == [
        (1, "a"),
        (1, "b"),
        (2, "a"),
        (2, "b"),
    ]
    assert per_node(rec["nodes"], "train_loss")["a"] == [(1, 0.9), (2, 0.45)]


def test_only_the_current_or_last_run_is_served_and_the_refusal_says_so() -> None:
    status = {"run_id": RUN, "history": HISTORY}
    runs = [{"run_id": RUN}, {"run_id": "older"}]
    with pytest.raises(Refused, match="older is an older run: export each run when it ends"):
        run_record("older", status, DETAILS, runs)
    with pytest.raises(Refused, match="it has no run 'typo'"):
        run_record("typo", status, DETAILS, runs)
    with pytest.raises(Refused, match="no run has happened"):
        run_record(None, {"run_id": None}, {}, [])
    assert run_record(None, status, DETAILS, runs)["run"]["run_id"] == RUN


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
