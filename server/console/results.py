"""A run's results to take away: its rounds and per-node metrics as one record, as CSV rows,
and as a plot of accuracy and loss per round, globally and per node.

The record is built from ``GET /runs/{run_id}``, which serves any run the orchestrator has
stored, current or past. A run over the nodes' own data also has, per round, the federated
reading of the round's model (the nodes' weighted mean on their own test splits), and each
node's reading of it (``evaluations``).
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
# A round's federated reading, as CSV columns after test_loss (runs that have one).
FEDERATED_COLUMNS = ("federated_accuracy", "federated_loss", "federated_nodes")
FEDERATED_LABEL = "federated (nodes' test splits)"
SERVER_LABEL = "server test split"


def run_record(
    answer: Mapping[str, Any],
    node_rows: Iterable[Mapping[str, Any]],
    readings: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """``{"run", "rounds", "nodes", "evaluations"}`` from ``GET /runs/{run_id}`` (``answer``,
    its first page) and every page's per-node rows: one flat row per node and round, by
    round then name; and the nodes' readings of each round's model, likewise in order."""
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
    evaluations = sorted(readings, key=lambda e: (e["round"], e["node_name"]))
    return {
        "run": dict(answer["run"]),
        "rounds": list(answer["rounds"]),
        "nodes": nodes,
        "evaluations": [dict(e) for e in evaluations],
    }


def csv_text(record: Mapping[str, Any]) -> str:
    """One long table: a ``global`` row per round, then one row per node and round."""
    rows: list[dict[str, Any]] = []
    run_id = record["run"]["run_id"]
    for h in record["rounds"]:
        row = {k: h.get(k) for k in FIXED_COLUMNS if k in h}
        row["contributors"] = ";".join(h.get("contributors", []))
        if h.get("federated"):
            row |= {k: h["federated"].get(k.removeprefix("federated_")) for k in FEDERATED_COLUMNS}
        rows.append({**row, "run_id": run_id, "scope": GLOBAL})
    for n in record["nodes"]:
        row = {k: v for k, v in n.items() if k not in ("node", "node_id")}
        rows.append({**row, "run_id": run_id, "scope": n["node"]})
    columns = list(FIXED_COLUMNS)
    if any(h.get("federated") for h in record["rounds"]):
        at = columns.index("test_loss") + 1
        columns[at:at] = FEDERATED_COLUMNS
    extra = sorted({k for r in rows for k in r} - set(columns))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*columns, *extra], lineterminator="\n")
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


def global_lines(
    rounds: Iterable[Mapping[str, Any]], metric: str
) -> dict[str, list[tuple[int, float]]]:
    """The run's lines of ``metric`` (accuracy or loss) per round: the server's test split and
    the federated reading, each where the run has it (a run over the nodes' own data may
    have no server test split)."""
    lines: dict[str, list[tuple[int, float]]] = {SERVER_LABEL: [], FEDERATED_LABEL: []}
    for h in rounds:
        server, federated = h.get(f"test_{metric}"), (h.get("federated") or {}).get(metric)
        if server is not None:
            lines[SERVER_LABEL].append((int(h["round"]), float(server)))
        if federated is not None:
            lines[FEDERATED_LABEL].append((int(h["round"]), float(federated)))
    return {label: points for label, points in lines.items() if points}


def plot_png(record: Mapping[str, Any], width: int, height: int) -> bytes:
    """Four panels: test accuracy and loss per round (the server's and the federated, each
    where the run has it), and each node's accuracy and training loss per round; exactly
    ``width`` x ``height`` pixels."""
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
    for ax, metric in ((axes[0][0], "accuracy"), (axes[0][1], "loss")):
        lines = global_lines(record["rounds"], metric)
        for label, points in lines.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_title(f"global test {metric}")
        if FEDERATED_LABEL in lines:
            ax.legend(fontsize="small")
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
