"""What the ``fedavg`` command shows: tables and lines made from the API's JSON, and the live
per-node board. Pure: dicts in, rich renderables or strings out; no sockets, no clock.

The per-round line is the demo's, so ``fedavg train`` and ``fedavg-demo`` print one table. A
job over the nodes' own data (``data_mode`` local) has a column more: the federated accuracy,
the nodes' weighted reading of the round's model on their own test splits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

ROUND_HEADER = (
    f"{'round':>5}  {'nodes':>5}  {'test acc':>8}  {'test loss':>9}  {'seconds':>7}  note"
)
LOCAL_ROUND_HEADER = (
    f"{'round':>5}  {'nodes':>5}  {'test acc':>8}  {'test loss':>9}  {'fed acc':>8}  "
    f"{'seconds':>7}  note"
)
ENDED = {"job_done": "completed", "job_stopped": "stopped", "job_failed": "failed"}


def number(value: Any, digits: int = 4) -> str:
    """A metric as text; "-" where the server had none (a diverged loss arrives as null, and
    so does the test accuracy of a job whose data the server holds no test split of)."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def when(ts: Any) -> str:
    """A server timestamp (seconds since the epoch) as UTC, to the second."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def round_line(
    data: Mapping[str, Any], federated: Mapping[str, Any] | None = None, *, local: bool = False
) -> str:
    """One closed round (a ``round_closed`` event's data, or a status history entry); with
    ``local``, under ``LOCAL_ROUND_HEADER``: the federated accuracy of the round's model from
    ``federated`` (the newest summary seen), else the entry's own."""
    note = ""
    if data.get("partial"):
        note = "partial average (missing: " + ", ".join(data.get("missing", [])) + ")"
    fed = ""
    if local:
        summary = federated or data.get("federated") or {}
        fed = f"{number(summary.get('accuracy')):>8}  "
    return (
        f"{data['round']:>5}  {len(data.get('contributors', [])):>5}  "
        f"{number(data.get('test_accuracy')):>8}  {number(data.get('test_loss')):>9}  "
        f"{fed}{number(data.get('seconds'), 2):>7}  {note}"
    ).rstrip()


def left_out_text(left_out: Iterable[Mapping[str, Any]]) -> str:
    """The nodes holding the data but left out of a job or an evaluation, each with why."""
    return "; ".join(f"{n.get('name') or n.get('node_id')} ({n.get('why')})" for n in left_out)


def started_line(started: Mapping[str, Any]) -> str:
    """The line a started job is announced with (``POST /train``'s answer)."""
    arch = started.get("model", {}).get("arch")
    strategy = started.get("server_opt", {}).get("strategy", "none")
    line = (
        f"job {started['job_id']} started ({started['rounds']} rounds, {started['nodes']} "
        f"nodes, model {arch}, partition {started.get('partition')}, "
        f"{started.get('aggregation')}, server optimizer {strategy}"
    )
    mode = started.get("data_mode")
    if mode == "local":
        line += ", data local: the nodes' own, never sent"
    elif mode is not None:
        line += f", data {mode}"
    line += ")"
    if started.get("left_out"):
        line += "; left out: " + left_out_text(started["left_out"])
    return line


def federated_text(summary: Mapping[str, Any]) -> str:
    """A federated summary: the nodes' weighted reading of one round's model."""
    nodes = summary.get("nodes")
    return (
        f"federated accuracy {number(summary.get('accuracy'))} (model of round "
        f"{summary.get('round')}, {nodes} node{'' if nodes == 1 else 's'}, "
        f"{summary.get('samples')} test samples)"
    )


def job_summary(status: Mapping[str, Any]) -> str:
    """The line that ends a followed job: how it ended, its accuracy and its model. A job
    over the nodes' own data says which reading of the final model it has: the server's
    test split where it has one, else the nodes' own (federated)."""
    state = status.get("state", "?")
    line = f"job {status.get('run_id')} {state} after round {status.get('round', 0)} of "
    line += f"{status.get('rounds', 0)}"
    if status.get("final_accuracy") is not None:
        line += f"; {_final_label(status)} {number(status['final_accuracy'])}"
    if status.get("model_url"):
        line += f"; model {str(status['model_url']).rsplit('/', 1)[-1]}"
    if status.get("error"):
        line += f"; {status['error']}"
    return line


def _final_label(status: Mapping[str, Any]) -> str:
    """A local job's final accuracy is the server's where it has a test split, else the
    nodes' weighted reading; a job's end event does not say which (no ``test_set``)."""
    if status.get("data_mode") != "local" or status.get("test_set"):
        return "final test accuracy"
    return "final federated accuracy" if "test_set" in status else "final accuracy"


def status_view(status: Mapping[str, Any]) -> RenderableType:
    """``fedavg status``: the run at a glance."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    if not status.get("run_id"):
        grid.add_row("run", "none yet (start one with `fedavg train mnist`)")
    else:
        grid.add_row("run", f"{status['run_id']} ({status.get('state')})")
        grid.add_row("dataset", f"{status.get('dataset')} ({status.get('dataset_source', '-')})")
        grid.add_row("round", _round_text(status))
        model = status.get("model") or {}
        train = status.get("train") or {}
        grid.add_row("model", f"{model.get('arch', '-')}, {_train_text(train)}")
        grid.add_row("partition", str(status.get("partition", "-")))
        if status.get("data_mode") == "local":
            grid.add_row("data", _local_text(status))
        strategy = (status.get("server_opt") or {}).get("strategy", "none")
        grid.add_row(
            "aggregation", f"{status.get('aggregation', '-')}, server optimizer {strategy}"
        )
        if status.get("final_accuracy") is not None:
            grid.add_row(_final_label(status), number(status["final_accuracy"]))
        if status.get("error"):
            grid.add_row("error", str(status["error"]))
    grid.add_row("nodes connected", str(status.get("nodes_connected", 0)))
    return grid


def _local_text(status: Mapping[str, Any]) -> str:
    """A job over the nodes' own data: where it is tested, and who was left out."""
    test_set = status.get("test_set")
    text = "the nodes' own; server test split: " + (test_set or "none, the nodes test")
    if status.get("federated"):
        text += "; " + federated_text(status["federated"][-1])
    if status.get("left_out"):
        text += "; left out: " + left_out_text(status["left_out"])
    return text


def _round_text(status: Mapping[str, Any]) -> str:
    text = f"{status.get('round', 0)} of {status.get('rounds', 0)}"
    if status.get("round_open"):
        expected, received = status.get("expected", []), status.get("received", [])
        text += f" (open: {len(received)}/{len(expected)} uploads in"
        if status.get("deadline_in_s") is not None:
            text += f", deadline in {status['deadline_in_s']:.0f} s"
        text += ")"
    return text


def _train_text(train: Mapping[str, Any]) -> str:
    keys = ("optimizer", "lr", "batch_size", "local_epochs", "proximal_mu")
    return ", ".join(f"{k} {train[k]}" for k in keys if train.get(k) is not None) or "-"


def nodes_table(nodes: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="nodes", title_justify="left")
    for name in ("name", "id", "device", "capacity", "state", "round", "batch", "loss", "shard"):
        table.add_column(
            name, justify="right" if name in ("capacity", "round", "shard") else "left"
        )
    for n in nodes:
        state = n.get("state", "-") if n.get("connected") else "offline"
        batch = f"{n['batch']}/{n['batches']}" if n.get("batches") else "-"
        table.add_row(
            str(n.get("name")),
            str(n.get("node_id")),
            str(n.get("device", "-")),
            number(n.get("capacity"), 1),
            str(state),
            str(n.get("round") or "-"),
            batch,
            number(n.get("loss"), 3),
            str(n.get("shard_samples") or "-"),
        )
    return table


def datasets_table(payload: Mapping[str, Any]) -> Table:
    """The catalogue, prepared or not, the imported datasets (prepared by definition), and
    the data connected nodes hold themselves."""
    prepared = {d["dataset_id"]: d for d in payload.get("datasets", [])}
    table = Table(title="datasets", title_justify="left")
    for name in ("id", "title", "shape", "classes", "prepared", "source", "train", "test"):
        table.add_column(name, justify="right" if name in ("classes", "train", "test") else "left")
    rows = {e["dataset_id"]: e for e in payload.get("catalog", [])}
    for dataset_id, info in prepared.items():
        rows.setdefault(dataset_id, {**info, "title": "imported"})
    for dataset_id, entry in rows.items():
        info = prepared.get(dataset_id, {})
        table.add_row(
            dataset_id,
            str(entry.get("title", "-")),
            "x".join(str(d) for d in entry.get("input_shape", [])),
            str(entry.get("num_classes", "-")),
            "yes" if info else "no",
            str(info.get("source", "-")),
            str(info.get("train_samples", "-")),
            str(info.get("test_samples", "-")),
        )
    for held in payload.get("announced", []):  # data the nodes hold themselves
        left_out = f" ({len(held['left_out'])} left out)" if held.get("left_out") else ""
        table.add_row(
            str(held["name"]),
            f"held by {len(held['nodes'])} node{'s' if len(held['nodes']) != 1 else ''}",
            "x".join(str(d) for d in held.get("input_shape", [])),
            str(held.get("num_classes", "-")),
            "on nodes",
            ", ".join(held["nodes"]) + left_out,
            str(held.get("train_samples", "-")),
            str(held.get("test_samples", "-")),
        )
    return table


def models_table(models: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="saved models", title_justify="left")
    for name in ("name", "kind", "created", "arch", "dataset", "rounds", "test acc", "size"):
        table.add_column(
            name, justify="right" if name in ("rounds", "test acc", "size") else "left"
        )
    for m in models:
        meta = m.get("metadata") or {}
        kind = str(m.get("kind", "final"))  # a job saves its final model and its best round's
        if m.get("best_round") is not None:
            kind += f" (round {m['best_round']})"
        table.add_row(
            str(m.get("name")),
            kind,
            str(m.get("created", "-"))[:19],
            str((meta.get("model_spec") or {}).get("arch", "-")),
            str(meta.get("dataset", "-")),
            str(meta.get("rounds", "-")),
            number(meta.get("test_accuracy")),
            f"{int(m.get('size', 0)) / 1e6:.2f} MB",
        )
    return table


def runs_table(runs: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="runs", title_justify="left")
    for name in ("run", "status", "dataset", "rounds", "final acc", "created", "error"):
        table.add_column(name, justify="right" if name in ("rounds", "final acc") else "left")
    for r in runs:
        table.add_row(
            str(r.get("run_id")),
            str(r.get("status")),
            str(r.get("dataset")),
            str(r.get("rounds")),
            number(r.get("final_accuracy")),
            when(r.get("created")),
            str(r.get("error") or ""),
        )
    return table


def evaluation_view(answer: Mapping[str, Any]) -> RenderableType:
    """``fedavg evaluate``: each node's reading of the model on its own test split, their
    weighted mean last, then who did not answer and who was left out."""
    table = Table(
        title=f"{answer.get('model')} on {answer.get('dataset')}'s test splits "
        f"({answer.get('evaluation_id')})",
        title_justify="left",
    )
    for name in ("node", "samples", "correct", "accuracy", "loss"):
        table.add_column(name, justify="left" if name == "node" else "right")
    nodes = answer.get("nodes", [])
    for n in nodes:
        table.add_row(
            str(n.get("name")),
            str(n.get("samples")),
            str(n.get("correct")),
            number(n.get("accuracy")),
            number(n.get("loss")),
        )
    weighted = answer.get("weighted")
    table.add_section()
    if weighted:
        correct = sum(int(n.get("correct", 0)) for n in nodes)
        table.add_row(
            f"weighted mean ({weighted.get('nodes')} nodes)",
            str(weighted.get("samples")),
            str(correct),
            number(weighted.get("accuracy")),
            number(weighted.get("loss")),
        )
    else:
        table.add_row("weighted mean", "-", "-", "-", "-")
    notes = []
    if answer.get("missing"):
        notes.append("did not answer: " + ", ".join(answer["missing"]))
    if answer.get("left_out"):
        notes.append("left out: " + left_out_text(answer["left_out"]))
    return Group(table, *(Text(note) for note in notes))


@dataclass(slots=True)
class NodeRow:
    """One node of the live board, as its events leave it."""

    name: str
    state: str = "idle"
    round: int | None = None
    batch: int = 0
    batches: int = 0
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None  # its latest reading of a global model, on its own data


class NodeBoard:
    """The live per-node view of one job, kept up to date by ``apply(event)``; in a job over
    the nodes' own data (``data_mode`` local), also each node's latest reading of a global
    model on its own test split and each round's federated summary (``federated``)."""

    def __init__(self, job_id: str, rounds: int = 0, data_mode: str | None = None) -> None:
        self.job_id = job_id
        self.rounds = rounds
        self.round = 0
        self.local = data_mode == "local"
        self.rows: dict[str, NodeRow] = {}
        self.federated: dict[int, Mapping[str, Any]] = {}  # by the round of the model read

    def seed(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """Start from the connected nodes of a snapshot or ``GET /nodes``."""
        for n in nodes:
            if n.get("connected"):
                row = NodeRow(name=str(n["name"]), state=str(n["state"]))
                row.test_accuracy = (n.get("evaluation") or {}).get("accuracy")
                self.rows[n["node_id"]] = row

    def apply(self, event: Mapping[str, Any]) -> None:
        kind, data = event.get("kind"), event.get("data") or {}
        node_id = event.get("node_id")
        if kind == "node_joined" and node_id:
            self.rows[node_id] = NodeRow(name=str(data.get("name", node_id)))
        elif kind == "node_left" and node_id in self.rows:
            self.rows[node_id].state = "offline"
        elif kind == "progress" and node_id in self.rows:
            # No run id on progress: the server drops frames about any job but its current one.
            self._progress(self.rows[node_id], data)
        elif event.get("run_id") != self.job_id:
            return
        elif kind == "round_opened":
            self.round = int(data["round"])
            expected = set(data.get("expected", []))
            for row in self.rows.values():
                if row.name in expected:
                    row.state, row.round, row.batch, row.epoch = "training", self.round, 0, None
        elif kind == "upload_accepted" and node_id in self.rows:
            row = self.rows[node_id]
            row.state, row.batch = "uploaded", row.batches
            row.val_accuracy = data.get("val_accuracy", row.val_accuracy)
        elif kind == "straggler" and node_id in self.rows:
            self.rows[node_id].state = "straggler"
        elif kind == "node_evaluated":
            self._evaluated(node_id, data)

    def _evaluated(self, node_id: str | None, data: Mapping[str, Any]) -> None:
        if node_id in self.rows:
            self.rows[node_id].test_accuracy = data.get("accuracy")
        summary = data.get("federated")
        if summary:  # the round's weighted mean so far: the newest holds every reading
            self.federated[int(summary["round"])] = summary

    @staticmethod
    def _progress(row: NodeRow, data: Mapping[str, Any]) -> None:
        row.state = "training"
        row.round = data.get("round", row.round)
        row.batch, row.batches = int(data.get("batch", 0)), int(data.get("batches", 0))
        row.loss = data.get("loss")
        # The epoch within the round, when the nodes send it (newer nodes do).
        row.epoch, row.epochs = data.get("epoch"), data.get("epochs")

    def render(self) -> RenderableType:
        table = Table(title=f"job {self.job_id}  round {self.round}/{self.rounds}")
        if self.local and self.federated:
            table.caption = federated_text(self.federated[max(self.federated)])
        columns = ["node", "state", "round", "epoch", "progress", "batch", "loss", "val acc"]
        if self.local:
            columns.append("test acc")
        for name in columns:
            table.add_column(name)
        for row in self.rows.values():
            epoch = f"{row.epoch}/{row.epochs}" if row.epoch is not None and row.epochs else "-"
            cells: list[RenderableType] = [
                row.name,
                row.state,
                str(row.round or "-"),
                epoch,
                ProgressBar(total=max(row.batches, 1), completed=row.batch, width=24),
                f"{row.batch}/{row.batches}" if row.batches else "-",
                number(row.loss, 3),
                number(row.val_accuracy),
            ]
            if self.local:
                cells.append(number(row.test_accuracy))
            table.add_row(*cells)
        if not self.rows:
            return Group(table, Text("no node connected yet"))
        return table


class RoundLines:
    """The per-round lines of the job a board follows. In a local job, round r's line waits
    until round r+1 closes or the job ends: the nodes read round r's model on their test
    splits before they train round r+1, so only then is its federated accuracy whole."""

    def __init__(self, board: NodeBoard) -> None:
        self.board = board
        self._held: Mapping[str, Any] | None = None

    @property
    def header(self) -> str:
        return LOCAL_ROUND_HEADER if self.board.local else ROUND_HEADER

    def closed(self, entry: Mapping[str, Any]) -> list[str]:
        """The lines to print now that ``entry`` (a closed round) is known."""
        if not self.board.local:
            return [round_line(entry)]
        lines = self.end()
        self._held = entry
        return lines

    def end(self) -> list[str]:
        """The line still held, once nothing more will come for it."""
        held, self._held = self._held, None
        if held is None:
            return []
        return [round_line(held, self.board.federated.get(int(held["round"])), local=True)]
