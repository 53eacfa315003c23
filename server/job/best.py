"""The best round of a job by a chosen metric, and what its saved model says about it.

Pure functions over the job's history (its rows as the views show them): the settler writes
the best round's checkpoint as a model of its own, beside the final one, at the job's end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BEST_METRICS: Mapping[str, int] = {
    "test_accuracy": 1,
    "test_loss": -1,
    "federated_accuracy": 1,  # the nodes' weighted readings, where the server has no test set
    "federated_loss": -1,
}
"""The metrics a best round is chosen by, and their sense: 1 higher is better, -1 lower."""
SETTABLE_METRICS = ("test_accuracy", "test_loss")  # FEDAVG_BEST_METRIC's choices
DEFAULT_BEST_METRIC = "test_accuracy"


def best_round(
    history: Sequence[Mapping[str, Any]], metric: str = DEFAULT_BEST_METRIC
) -> Mapping[str, Any] | None:
    """The closed round with the best ``metric`` (the earliest of equals), or None when no
    round has a finite reading of it."""
    sense = BEST_METRICS[metric]
    scored = [h for h in history if _finite(h.get(metric))]
    if not scored:
        return None
    return max(scored, key=lambda h: (sense * float(h[metric]), -int(h["round"])))


def scored_rows(
    history: Sequence[Mapping[str, Any]], federated: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The history's rows, each with its model's federated readings (``federated_accuracy``,
    ``_loss``, ``_samples``, ``_nodes``) where the nodes reported them."""
    by_round = {int(f["round"]): f for f in federated}
    rows = []
    for row in history:
        readings = by_round.get(int(row["round"]))
        extra = {f"federated_{k}": readings[k] for k in FEDERATED} if readings else {}
        rows.append({**row, **extra})
    return rows


FEDERATED = ("accuracy", "loss", "samples", "nodes")


def figures(row: Mapping[str, Any]) -> dict[str, str]:
    """A round's figures as model metadata: the server's test readings and the federated
    ones, each only where it has a finite value."""
    keys = ("test_accuracy", "test_loss", *(f"federated_{k}" for k in FEDERATED))
    return {
        k: (str(row[k]) if isinstance(row[k], int) else f"{float(row[k]):.6f}")
        for k in keys
        if _finite(row.get(k))
    }


def best_metadata(row: Mapping[str, Any], metric: str) -> dict[str, str]:
    """What a best model's metadata adds: its kind, round, and the metric it won by."""
    return {
        "kind": "best",
        "best_round": str(row["round"]),
        "best_metric": metric,
        "best_value": f"{float(row[metric]):.6f}",
        **figures(row),
    }


def best_model_name(job_id: str) -> str:
    return f"{job_id}.best.safetensors"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
