"""What the ``fedavg`` command shows: the round lines, the tables and the live node board."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, RenderableType

from server.console.views import (
    ROUND_HEADER,
    NodeBoard,
    datasets_table,
    job_summary,
    models_table,
    nodes_table,
    round_line,
    runs_table,
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
