"""Choosing a job's best round from its history, by either metric."""

from __future__ import annotations

import math
from typing import Any

import pytest

from server.job.best import BEST_METRICS, best_metadata, best_round, figures, scored_rows


def _history(*scores: tuple[float, float]) -> list[dict[str, Any]]:
    """Rows with the same readings from the server's test set and from the nodes'."""
    return [
        {
            "round": r,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "federated_accuracy": accuracy,
            "federated_loss": loss,
        }
        for r, (accuracy, loss) in enumerate(scores, start=1)
    ]


HISTORY = _history((0.50, 1.9), (0.81, 0.7), (0.79, 0.6), (0.80, 0.8))


def test_the_best_round_by_accuracy_is_the_highest_not_the_last() -> None:
    best = best_round(HISTORY, "test_accuracy")
    assert best is not None and best["round"] == 2


def test_the_best_round_by_loss_is_the_lowest() -> None:
    best = best_round(HISTORY, "test_loss")
    assert best is not None and best["round"] == 3


@pytest.mark.parametrize("metric", sorted(BEST_METRICS))
def test_of_equal_rounds_the_earliest_is_best(metric: str) -> None:
    best = best_round(_history((0.5, 1.0), (0.9, 0.2), (0.9, 0.2)), metric)
    assert best is not None and best["round"] == 2


def test_rounds_without_a_finite_reading_are_never_best() -> None:
    history = _history((0.4, 1.0), (math.nan, math.inf), (0.3, math.nan))
    assert best_round(history, "test_loss") == history[0]
    assert best_round(history, "test_accuracy") == history[0]
    assert best_round(_history((math.nan, math.nan)), "test_accuracy") is None
    assert best_round([], "test_accuracy") is None


def test_a_best_models_metadata_names_its_round_and_metric() -> None:
    meta = best_metadata(HISTORY[1], "test_accuracy")
    assert meta["kind"] == "best"
    assert (meta["best_round"], meta["best_metric"]) == ("2", "test_accuracy")
    assert float(meta["best_value"]) == pytest.approx(0.81)
    assert all(isinstance(v, str) for v in meta.values())  # safetensors metadata is text


def test_own_data_rounds_are_scored_by_the_nodes_readings_where_they_reported() -> None:
    history = [
        {"round": 1, "test_accuracy": None, "test_loss": None},
        {"round": 2, "test_accuracy": None, "test_loss": None},
        {"round": 3, "test_accuracy": None, "test_loss": None},
    ]
    federated = [
        {"round": 0, "accuracy": 0.1, "loss": 2.3, "samples": 40, "nodes": 2},
        {"round": 1, "accuracy": 0.7, "loss": 0.9, "samples": 40, "nodes": 2},
        {"round": 3, "accuracy": 0.6, "loss": 1.0, "samples": 20, "nodes": 1},
    ]
    rows = scored_rows(history, federated)
    assert "federated_accuracy" not in rows[1]  # round 2's model: nobody reported
    best = best_round(rows, "federated_accuracy")
    assert best is not None and best["round"] == 1
    meta = figures(rows[2])
    assert meta == {
        "federated_accuracy": "0.600000",
        "federated_loss": "1.000000",
        "federated_samples": "20",
        "federated_nodes": "1",
    }  # no server test figures: it has no test set for the nodes' data
