"""A run's results to take away: its rounds and per-node metrics as one record, as CSV rows,
and as a plot of accuracy and loss per round, globally and per node.

The record is built from ``GET /runs/{run_id}``, which serves any run the orchestrator has
stored, current or past.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from server.console.errors import ConsoleError

GLOBAL = "global"  # the scope of a round's row in the CSV; a node's rows carry its name
FIXED_COLUMNS = (
    "run_id",
    "round",
    "scope",
    "samples",
    "contributors",
    "partial",
    "test_accuracy",
    "test_loss",
    "seconds",
)


def run_record(answer: Mapping[str, Any], node_rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"run", "rounds", "nodes"}`` from ``GET /runs/{run_id}`` (``answer``, its first page)
    and every page's per-node rows: one flat row per node and round, by round then name."""
    nodes = [
        {
            "node": n["name"],
            "node_id": n["node_id"],
            "round": n["round"],
            "samples": n["samples"],
            **n.get("metrics", {}),
        }
        for n in node_rows
    ]
    nodes.sort(key=lambda h: (h["round"], h["node"]))
    return {"run": dict(answer["run"]), "rounds": list(answer["rounds"]), "nodes": nodes}


def csv_text(record: Mapping[str, Any]) -> str:
    """One long table: a ``global`` row per round, then one row per node and round."""
    rows: list[dict[str, Any]] = []
    run_id = record["run"]["run_id"]
    for h in record["rounds"]:
        row = {k: h.get(k) for k in FIXED_COLUMNS if k in h}
        row["contributors"] = ";".join(h.get("contributors", []))
        rows.append({**row, "run_id": run_id, "scope": GLOBAL})
    for n in record["nodes"]:
        row = {k: v for k, v in n.items() if k not in ("node", "node_id")}
        rows.append({**row, "run_id": run_id, "scope": n["node"]})
    extra = sorted({k for r in rows for k in r} - set(FIXED_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*FIXED_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def per_node(nodes: Iterable[Mapping[str, Any]], metric: str) -> dict[str, list[tuple[int, float]]]:
    """``{node: [(round, value), ...]}`` for the node rows that carry ``metric``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for n in nodes:
        if n.get(metric) is not None:
            series.setdefault(str(n["node"]), []).append((int(n["round"]), float(n[metric])))
    return series


def plot_png(record: Mapping[str, Any], width: int, height: int) -> bytes:
    """Four panels: test accuracy and loss per round, and each node's accuracy and training
    loss per round; exactly ``width`` x ``height`` pixels."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        from matplotlib import pyplot as plt
    except ImportError:
        raise ConsoleError(
            "plotting needs matplotlib: pip install 'fedavg[plot]' (or matplotlib)"
        ) from None
    dpi = 100
    fig, axes = plt.subplots(2, 2, figsize=(width / dpi, height / dpi), dpi=dpi)
    rounds = record["rounds"]
    xs = [h["round"] for h in rounds]
    for ax, key, title in (
        (axes[0][0], "test_accuracy", "test accuracy"),
        (axes[0][1], "test_loss", "test loss"),
    ):
        ys = [h.get(key) for h in rounds]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o")
        ax.set_title(f"global {title}")
    accuracy = "val_accuracy" if per_node(record["nodes"], "val_accuracy") else "train_accuracy"
    for ax, key in ((axes[1][0], accuracy), (axes[1][1], "train_loss")):
        for name, points in sorted(per_node(record["nodes"], key).items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name)
        ax.set_title(f"per node: {key.replace('_', ' ')}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes.flat:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.suptitle(f"run {record['run']['run_id']}")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    plt.close(fig)
    return out.getvalue()
