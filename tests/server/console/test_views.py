"""What the ``fedavg`` command shows: the round lines, the tables and the live node board."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, RenderableType

from server.console.views import (
    LOCAL_ROUND_HEADER,
    ROUND_HEADER,
    NodeBoard,
    RoundLines,
    datasets_table,
    evaluation_view,
    job_summary,
    models_table,
    nodes_table,
    number,
    round_line,
    runs_table,
    started_line,
    status_view,
)

JOB = "mnist-20261201T120000Z-abcd"


def text(renderable: RenderableType) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def node(node_id: str, name: str, connected: bool = True, **extra: Any) -> dict[str, Any]:
    return {"node_id": node_id, "name": name, "connected": connected, "state": "idle", **extra}


def event(kind: str, data: dict[str, Any], **where: Any) -> dict[str, Any]:
    return {"type": "event", "kind": kind, "data": data, **where}


def test_a_round_line_sits_under_the_demo_header_and_names_a_partial_average() -> None:
    entry = {
        "round": 3,
        "contributors": ["a", "b"],
        "test_accuracy": 0.91234,
        "test_loss": None,  # a diverged loss arrives as null
        "seconds": 1.5,
        "partial": True,
        "missing": ["c"],
    }
    line = round_line(entry)
    assert line.split()[:5] == ["3", "2", "0.9123", "-", "1.50"]
    assert line.endswith("partial average (missing: c)")
    assert ROUND_HEADER.split()[:2] == ["round", "nodes"]
    assert line.index("0.9123") + len("0.9123") == ROUND_HEADER.index("test acc") + len("test acc")


def test_the_summary_says_how_the_job_ended() -> None:
    done = {
        "run_id": JOB,
        "state": "completed",
        "round": 2,
        "rounds": 2,
        "final_accuracy": 0.9,
        "model_url": f"/models/{JOB}.safetensors",
    }
    assert job_summary(done) == (
        f"job {JOB} completed after round 2 of 2; final test accuracy 0.9000; "
        f"model {JOB}.safetensors"
    )
    stopped = {"run_id": JOB, "state": "stopped", "round": 1, "rounds": 9, "error": "by you"}
    assert job_summary(stopped) == f"job {JOB} stopped after round 1 of 9; by you"


def test_the_status_shows_round_r_of_e_and_the_open_round() -> None:
    status = {
        "run_id": JOB,
        "state": "running",
        "dataset": "mnist",
        "dataset_source": "idx",
        "round": 2,
        "rounds": 5,
        "round_open": True,
        "expected": ["a", "b"],
        "received": ["a"],
        "deadline_in_s": 42.4,
        "model": {"arch": "cnn"},
        "train": {"lr": 0.01},
        "partition": "iid",
        "aggregation": "weighted",
        "server_opt": {"strategy": "fedadam"},
        "nodes_connected": 2,
    }
    shown = text(status_view(status))
    assert "2 of 5 (open: 1/2 uploads in, deadline in 42 s)" in shown
    assert "cnn, lr 0.01" in shown and "server optimizer fedadam" in shown
    assert "none yet" in text(status_view({"run_id": None, "nodes_connected": 0}))


def test_the_tables_show_the_api_rows() -> None:
    nodes = text(
        nodes_table(
            [
                node("id-1", "gpu-box", batch=3, batches=9, loss=0.5),
                node("id-2", "gone", connected=False),
            ]
        )
    )
    assert "gpu-box" in nodes and "3/9" in nodes and "offline" in nodes
    datasets = text(
        datasets_table(
            {
                "catalog": [
                    {
                        "dataset_id": "mnist",
                        "title": "MNIST",
                        "input_shape": [1, 28, 28],
                        "num_classes": 10,
                    }
                ],
                "datasets": [
                    {
                        "dataset_id": "mnist",
                        "source": "idx",
                        "train_samples": 60000,
                        "test_samples": 10000,
                    },
                    {
                        "dataset_id": "pets",
                        "source": "import",
                        "input_shape": [3, 64, 64],
                        "num_classes": 2,
                        "train_samples": 80,
                        "test_samples": 20,
                    },
                ],
                "announced": [
                    {
                        "name": "scans",
                        "input_shape": [1, 64, 64],
                        "num_classes": 3,
                        "nodes": ["a", "b"],
                        "train_samples": 500,
                        "test_samples": 120,
                        "left_out": [{"node_id": "c", "why": "input_shape differs"}],
                    }
                ],
            }
        )
    )
    assert "1x28x28" in datasets and "60000" in datasets
    assert "pets" in datasets and "imported" in datasets
    assert "held by 2 nodes" in datasets and "a, b (1 left out)" in datasets
    models = text(
        models_table(
            [
                {
                    "name": "m.safetensors",
                    "size": 2_000_000,
                    "created": "2026",
                    "kind": "best",
                    "best_round": 4,
                    "metadata": {
                        "model_spec": {"arch": "mlp"},
                        "rounds": "5",
                        "test_accuracy": "0.9",
                    },
                }
            ]
        )
    )
    assert "m.safetensors" in models and "2.00 MB" in models and "0.9000" in models
    assert "best (round 4)" in models
    runs = text(
        runs_table(
            [
                {
                    "run_id": JOB,
                    "status": "failed",
                    "dataset": "mnist",
                    "rounds": 5,
                    "final_accuracy": None,
                    "created": 0,
                    "error": "no uploads",
                }
            ]
        )
    )
    assert JOB in runs and "1970-01-01 00:00:00" in runs and "no uploads" in runs


def test_the_board_follows_a_round_from_open_to_upload() -> None:
    board = NodeBoard(JOB, rounds=3)
    board.seed([node("id-1", "alpha"), node("id-2", "beta"), node("id-3", "gone", False)])
    assert [r.name for r in board.rows.values()] == ["alpha", "beta"]
    board.apply(event("round_opened", {"round": 1, "expected": ["alpha", "beta"]}, run_id=JOB))
    # Progress carries no run id; it is about the node's current job.
    board.apply(
        event(
            "progress",
            {"round": 1, "batch": 4, "batches": 10, "loss": 0.7, "epoch": 2, "epochs": 3},
            node_id="id-1",
        )
    )
    board.apply(
        event("upload_accepted", {"round": 1, "val_accuracy": 0.8}, node_id="id-2", run_id=JOB)
    )
    alpha, beta = board.rows["id-1"], board.rows["id-2"]
    assert (alpha.state, alpha.batch, alpha.batches, alpha.epoch) == ("training", 4, 10, 2)
    assert (beta.state, beta.val_accuracy) == ("uploaded", 0.8)
    shown = text(board.render())
    assert f"job {JOB}  round 1/3" in shown
    assert "4/10" in shown and "2/3" in shown and "0.700" in shown and "0.8000" in shown


def test_the_board_ignores_other_jobs_and_marks_nodes_that_come_and_go() -> None:
    board = NodeBoard(JOB, rounds=3)
    board.apply(event("node_joined", {"name": "late"}, node_id="id-9"))
    board.apply(event("round_opened", {"round": 7, "expected": ["late"]}, run_id="other-job"))
    board.apply(event("straggler", {"round": 7}, node_id="id-9", run_id="other-job"))
    assert board.round == 0 and board.rows["id-9"].state == "idle"
    board.apply(event("straggler", {"round": 1}, node_id="id-9", run_id=JOB))
    assert board.rows["id-9"].state == "straggler"
    board.apply(event("node_left", {"name": "late"}, node_id="id-9"))
    assert board.rows["id-9"].state == "offline"
    assert "no node connected yet" in text(NodeBoard(JOB).render())


# -- jobs over the nodes' own data (data_mode local) ------------------------------------------

LEFT_OUT = [{"node_id": "c", "name": "name-c", "why": "input_shape [3, 28, 28], not [1, 28, 28]"}]


def federated(round_: int, accuracy: float, nodes: int = 2) -> dict[str, Any]:
    return {"round": round_, "accuracy": accuracy, "loss": 0.5, "samples": 80, "nodes": nodes}


def closed(round_: int, **extra: Any) -> dict[str, Any]:
    """A ``round_closed`` event's data in a local job with no server test split."""
    entry = {"round": round_, "contributors": ["a", "b"], "seconds": 0.5, "partial": False}
    return {**entry, "test_accuracy": None, "test_loss": None, "federated": None, **extra}


def evaluated(node_id: str, round_: int, accuracy: float, fed_accuracy: float) -> dict[str, Any]:
    data = {"round": round_, "name": node_id, "samples": 40, "correct": int(accuracy * 40)}
    data |= {"accuracy": accuracy, "loss": 0.4, "federated": federated(round_, fed_accuracy)}
    return event("node_evaluated", data, run_id=JOB, node_id=node_id)


def test_a_round_with_no_server_test_split_shows_dashes_and_its_federated_accuracy() -> None:
    line = round_line(closed(2, federated=federated(2, 0.8125)), local=True)
    assert line.split()[:6] == ["2", "2", "-", "-", "0.8125", "0.50"]
    fed_end = LOCAL_ROUND_HEADER.index("fed acc") + len("fed acc")
    assert line.index("0.8125") + len("0.8125") == fed_end
    # The newest summary seen wins over the entry's own; none at all is a dash.
    newer = round_line(closed(2, federated=federated(2, 0.5)), federated(2, 0.75), local=True)
    assert newer.split()[4] == "0.7500"
    assert round_line(closed(3), local=True).split()[4] == "-"
    assert number(float("nan")) == "-" and number(float("inf")) == "-"
    # A shards job keeps its columns: no federated one.
    assert round_line(closed(2, federated=federated(2, 0.8125))).split()[:5] == [
        "2",
        "2",
        "-",
        "-",
        "0.50",
    ]


def test_a_local_round_line_waits_for_the_nodes_reading_of_its_model() -> None:
    board = NodeBoard(JOB, rounds=2, data_mode="local")
    board.seed([node("a", "a"), node("b", "b")])
    lines = RoundLines(board)
    assert lines.header == LOCAL_ROUND_HEADER
    assert lines.closed(closed(1)) == []  # its model is read before round 2 is trained
    board.apply(evaluated("a", 1, 0.7, 0.7))
    board.apply(evaluated("b", 1, 0.9, 0.75))
    (first,) = lines.closed(closed(2))
    assert first.split()[0] == "1" and first.split()[4] == "0.7500"
    board.apply(evaluated("a", 2, 0.95, 0.95))  # the final model, before the job's end
    (last,) = lines.end()
    assert last.split()[0] == "2" and last.split()[4] == "0.9500"
    assert lines.end() == []


def test_a_shards_job_prints_each_round_at_once_under_the_demo_header() -> None:
    lines = RoundLines(NodeBoard(JOB, rounds=2, data_mode="shards"))
    assert lines.header == ROUND_HEADER
    (line,) = lines.closed({**closed(1), "test_accuracy": 0.9})
    assert line == round_line({**closed(1), "test_accuracy": 0.9})
    assert lines.end() == []


def test_the_board_shows_each_nodes_local_test_accuracy_in_a_local_job() -> None:
    board = NodeBoard(JOB, rounds=3, data_mode="local")
    evaluation = {"round": 1, "accuracy": 0.625, "loss": 0.9, "samples": 40}
    board.seed([node("a", "alpha", evaluation=evaluation), node("b", "beta", evaluation=None)])
    assert board.rows["a"].test_accuracy == 0.625 and board.rows["b"].test_accuracy is None
    board.apply(evaluated("b", 2, 0.875, 0.8))
    board.apply({**evaluated("a", 2, 0.1, 0.1), "run_id": "other-job"})  # not this job's
    shown = text(board.render())
    assert "test acc" in shown and "0.6250" in shown and "0.8750" in shown
    assert "federated accuracy 0.8000 (model of round 2, 2 nodes, 80 test samples)" in shown
    shards = NodeBoard(JOB, rounds=3)
    shards.seed([node("a", "alpha")])
    assert "test acc" not in text(shards.render())


def test_the_start_line_says_where_the_data_is_and_who_was_left_out() -> None:
    started = {
        "job_id": JOB,
        "rounds": 2,
        "nodes": 2,
        "model": {"arch": "mlp"},
        "partition": "iid",
        "aggregation": "weighted",
        "server_opt": {"strategy": "none"},
    }
    assert started_line({**started, "data_mode": "shards", "left_out": []}) == (
        f"job {JOB} started (2 rounds, 2 nodes, model mlp, partition iid, weighted, "
        "server optimizer none, data shards)"
    )
    local = started_line({**started, "data_mode": "local", "left_out": LEFT_OUT})
    assert local.startswith(f"job {JOB} started (2 rounds, 2 nodes, model mlp")
    assert "data local: the nodes' own, never sent)" in local
    assert local.endswith("; left out: name-c (input_shape [3, 28, 28], not [1, 28, 28])")


def test_a_local_jobs_status_and_summary_name_their_federated_reading() -> None:
    status = {
        "run_id": JOB,
        "state": "completed",
        "round": 2,
        "rounds": 2,
        "data_mode": "local",
        "test_set": None,
        "federated": [federated(0, 0.1), federated(2, 0.8125)],
        "left_out": LEFT_OUT,
        "final_accuracy": 0.8125,
    }
    shown = text(status_view(status))
    assert "the nodes' own; server test split: none" in shown
    assert "federated accuracy 0.8125 (model of round 2" in shown and "name-c (" in shown
    assert "final federated accuracy" in shown
    assert "final federated accuracy 0.8125" in job_summary(status)
    tested = job_summary({**status, "test_set": "mnist"})
    assert "final test accuracy 0.8125" in tested
    no_test_set_known = {k: v for k, v in status.items() if k != "test_set"}  # an end event's
    assert "; final accuracy 0.8125" in job_summary(no_test_set_known)


def test_an_evaluation_shows_each_node_then_the_weighted_mean_then_who_is_missing() -> None:
    answer = {
        "evaluation_id": "eval-digits-20261201T120000Z-abcd",
        "dataset": "digits",
        "model": "m.safetensors",
        "nodes": [
            {
                "node_id": "a",
                "name": "name-a",
                "samples": 60,
                "correct": 51,
                "accuracy": 0.85,
                "loss": 0.4,
            },
            {
                "node_id": "b",
                "name": "name-b",
                "samples": 20,
                "correct": 11,
                "accuracy": 0.55,
                "loss": None,
            },
        ],
        "missing": ["name-d"],
        "left_out": [{"node_id": "c", "why": "input_shape differs"}],
        "weighted": {"round": 0, "accuracy": 62 / 80, "loss": 0.4, "samples": 80, "nodes": 2},
    }
    shown = text(evaluation_view(answer))
    rows = [line for line in shown.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == [
        "name-a",
        "name-b",
        "weighted mean (2 nodes)",
    ]
    assert [c.strip() for c in rows[-1].split("│")[2:6]] == ["80", "62", "0.7750", "0.4000"]
    assert [c.strip() for c in rows[1].split("│")[2:6]] == ["20", "11", "0.5500", "-"]
    assert "did not answer: name-d" in shown and "left out: c (input_shape differs)" in shown
    nobody = text(evaluation_view({**answer, "nodes": [], "weighted": None, "missing": []}))
    assert "weighted mean" in nobody and "did not answer" not in nobody
