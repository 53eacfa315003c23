"""Rebuilding jobs after a restart, over a real SQLite store and real files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from node.shared.errors import WeightsError
from node.shared.model import init_state
from node.shared.protocol import TrainConfig
from node.shared.shards import encode_xy
from node.shared.weights import WeightsMeta, encode_weights, sha256_hex
from server.core.federated_eval import Reading
from server.datasets import DatasetInfo, split_path
from server.job.job import Checkpoint, JobContext
from server.job.restore import finished_view, remove_stale_temp_files, restore_job, run_history
from server.store import RoundRow, Store
from tests.server.job.conftest import SPEC

RUN_ID = "tiny-20240101T000000Z-abcd"


def dataset(folder: Path) -> DatasetInfo:
    """A prepared dataset with a real test split (all a restore reads of it)."""
    path = split_path(folder, "tiny", "test")
    path.parent.mkdir(parents=True)
    data = encode_xy(torch.zeros(6, 4, 4, dtype=torch.uint8), torch.arange(6) % 3)
    path.write_bytes(data)
    info = DatasetInfo(
        dataset_id="tiny",
        source="synthetic",
        source_detail="zeros",
        train_samples=12,
        test_samples=6,
        num_classes=3,
        input_shape=(1, 4, 4),
        train_sha256="00" * 32,
        test_sha256=sha256_hex(data),
        prepared_at="2024-01-01T00:00:00+00:00",
    )
    (path.parent / "info.json").write_text(json.dumps(info.to_dict()))
    return info


def checkpoint(folder: Path, round_: int) -> Checkpoint:
    data = encode_weights(init_state(SPEC, round_), WeightsMeta(spec=SPEC, round=round_))
    path = folder / RUN_ID / f"round-{round_:04d}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Checkpoint(round_, path, sha256_hex(data))


def shard(folder: Path, node_id: str, samples: int) -> dict[str, Any]:
    path = folder / f"{node_id}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"shard of " + node_id.encode())
    return {"name": f"name-{node_id}", "path": str(path), "sha256": "ab" * 32, "samples": samples}


def create_run(store: Store, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A run row as ``Job.start`` records one; returns it as ``Store.runs`` reads it back."""
    initial = checkpoint(tmp_path / "runs", 0)
    row: dict[str, Any] = {
        "run_id": RUN_ID,
        "dataset": "tiny",
        "dataset_source": "synthetic",
        "status": "running",
        "rounds": 4,
        "aggregation": "weighted",
        "model_spec": SPEC.to_dict(),
        "config": {
            "train": {"lr": 0.01, "batch_size": 8},
            "seed": 7,
            "shards": {
                "n1": {**shard(tmp_path / "shards", "n1", 8), "own": 8},
                "n2": {**shard(tmp_path / "shards", "n2", 6), "own": 4},
            },
            "initial": {"path": str(initial.path), "sha256": initial.sha256},
        },
        "created": 100.0,
    }
    store.create_run(**{**row, **changes})
    (run,) = store.runs()
    return run


def record_round(store: Store, round_: int, cp: Checkpoint, **changes: Any) -> None:
    values: dict[str, Any] = {
        "run_id": RUN_ID,
        "round": round_,
        "opened_at": 100.0 + 10 * round_,
        "closed_at": 104.5 + 10 * round_,
        "contributors": ["name-n1", "name-n2"],
        "samples": 14,
        "partial": False,
        "missing": [],
        "test_accuracy": 0.5 + round_ / 10,
        "test_loss": 1.0 / round_,
        "checkpoint": str(cp.path),
        "sha256": cp.sha256,
    }
    store.record_round(RoundRow(**{**values, **changes}))


# -- history and the finished view ----------------------------------------------------------


def test_history_is_the_closed_rounds_as_the_views_show_them(store: Store, tmp_path: Path) -> None:
    run = create_run(store, tmp_path)
    assert run_history(store, run) == []
    record_round(store, 2, checkpoint(tmp_path, 2), partial=True, missing=["name-n2"])
    record_round(store, 1, checkpoint(tmp_path, 1))

    assert run_history(store, run) == [
        {
            "round": 1,
            "rounds": 4,
            "contributors": ["name-n1", "name-n2"],
            "samples": 14,
            "partial": False,
            "missing": [],
            "test_accuracy": 0.6,
            "test_loss": 1.0,
            "seconds": 4.5,
            "federated": None,  # a shards job: the nodes evaluate nothing
        },
        {
            "round": 2,
            "rounds": 4,
            "contributors": ["name-n1", "name-n2"],
            "samples": 14,
            "partial": True,
            "missing": ["name-n2"],
            "test_accuracy": 0.7,
            "test_loss": 0.5,
            "seconds": 4.5,
            "federated": None,
        },
    ]


def test_history_carries_each_rounds_federated_readings(store: Store, tmp_path: Path) -> None:
    run = create_run(store, tmp_path)
    record_round(store, 1, checkpoint(tmp_path, 1))
    record_round(store, 2, checkpoint(tmp_path, 2))
    for node_id, samples, correct, loss in (("n1", 30, 15, 1.0), ("n2", 10, 9, None)):
        store.record_node_evaluation(
            RUN_ID, Reading(node_id, 1, samples, correct, loss), node_id, 1.0
        )
    store.record_node_evaluation(RUN_ID, Reading("n1", 0, 30, 3, 2.0), "n1", 0.5)
    first, second = run_history(store, run)
    assert first["federated"] == {
        "round": 1,
        "accuracy": 24 / 40,  # the summed correct over the summed samples
        "loss": 1.0,  # over the readings that have one
        "samples": 40,
        "nodes": 2,
    }
    assert second["federated"] is None  # nobody has evaluated round 2's model yet
    view = finished_view(store, store.runs()[0])
    assert [f["round"] for f in view["federated"]] == [0, 1]  # the initial model too


def test_the_finished_view_of_a_completed_run(store: Store, tmp_path: Path) -> None:
    run = create_run(store, tmp_path)
    for round_ in (1, 2, 3):
        record_round(store, round_, checkpoint(tmp_path, round_), partial=round_ != 2)
    store.update_run(
        RUN_ID,
        status="completed",
        finished=160.0,
        model_path=str(tmp_path / "models" / f"{RUN_ID}.safetensors"),
        final_accuracy=0.8,
    )
    (run,) = store.runs()

    view = finished_view(store, run)

    assert view == {
        "run_id": RUN_ID,
        "state": "completed",
        "dataset": "tiny",
        "dataset_source": "synthetic",
        "round": 3,
        "rounds": 4,
        "round_open": False,
        "expected": [],
        "received": [],
        "not_waited_for": [],
        "deadline_in_s": None,
        "time_in_round_s": None,
        "partial_rounds": 2,
        "aggregation": "weighted",
        "model": SPEC.to_dict(),
        "train": {  # what the row recorded; a field it lacks is null
            "optimizer": None,
            "lr": 0.01,
            "batch_size": 8,
            "local_epochs": None,
            "max_batches": None,
            "proximal_mu": None,
            "keep_optimizer_state": None,
        },
        "partition": "iid",  # recorded before partitions: today's split
        "server_opt": {"strategy": "none"},  # recorded before server optimizers: FedAvg
        "sampling": {"fraction": 1.0, "min_nodes": 1},  # recorded before sampling: everyone
        "sampled": None,
        "data_mode": "shards",  # recorded before own data: the server's shards
        "test_set": "tiny",
        "left_out": [],
        "federated": [],
        "started_at": 100.0,
        "elapsed_s": 60.0,
        "history": run_history(store, run),
        "error": None,
        "model_url": f"/models/{RUN_ID}.safetensors",
        "final_accuracy": 0.8,
    }


def test_the_finished_view_of_a_run_without_a_model_or_an_end(store: Store, tmp_path: Path) -> None:
    create_run(store, tmp_path, status="failed", error="could not resume after a restart: x")
    (run,) = store.runs()

    view = finished_view(store, run)

    assert (view["state"], view["round"], view["partial_rounds"]) == ("failed", 0, 0)
    assert view["error"] == "could not resume after a restart: x"
    assert view["model_url"] is None
    assert view["elapsed_s"] == 0.0  # no finish time: not a negative or a crash
    assert view["history"] == []


# -- restoring a job ------------------------------------------------------------------------


def test_a_restored_job_carries_on_from_its_last_recorded_round(
    store: Store, ctx: JobContext, tmp_path: Path
) -> None:
    run = create_run(store, tmp_path)
    closed = [checkpoint(tmp_path / "runs", r) for r in (1, 2)]
    for cp in closed:
        record_round(store, cp.round, cp)

    job = restore_job(run, ctx, dataset(tmp_path / "datasets"), tmp_path / "datasets")

    assert (job.job_id, job.rounds, job.seed, job.started_at) == (RUN_ID, 4, 7, 100.0)
    assert job.spec == SPEC
    assert job.config == TrainConfig(lr=0.01, batch_size=8)
    assert sorted(job.checkpoints) == [0, 1, 2]
    assert job.checkpoints[2] == closed[1]
    assert job.history == run_history(store, run)
    assert job.machine.round == 2
    assert job.names == {"n1": "name-n1", "n2": "name-n2"}
    assert {n: (f.samples, f.own) for n, f in job.shards.items()} == {"n1": (8, 8), "n2": (6, 4)}
    # What the views said of a run that ended before the restart, they say of a live one.
    assert set(finished_view(store, run)) == set(job.view())


def test_restore_refuses_when_a_shard_file_is_gone(
    store: Store, ctx: JobContext, tmp_path: Path
) -> None:
    run = create_run(store, tmp_path)
    (tmp_path / "shards" / "n2.safetensors").unlink()

    with pytest.raises(FileNotFoundError, match="shard files are gone"):
        restore_job(run, ctx, dataset(tmp_path / "datasets"), tmp_path / "datasets")


def test_restore_refuses_a_gap_in_the_recorded_rounds(
    store: Store, ctx: JobContext, tmp_path: Path
) -> None:
    run = create_run(store, tmp_path)
    record_round(store, 1, checkpoint(tmp_path / "runs", 1))
    record_round(store, 3, checkpoint(tmp_path / "runs", 3))

    with pytest.raises(ValueError, match="round 3 recorded after round 1"):
        restore_job(run, ctx, dataset(tmp_path / "datasets"), tmp_path / "datasets")


def test_restore_refuses_a_latest_checkpoint_that_changed(
    store: Store, ctx: JobContext, tmp_path: Path
) -> None:
    run = create_run(store, tmp_path)
    cp = checkpoint(tmp_path / "runs", 1)
    record_round(store, 1, cp)
    cp.path.write_bytes(cp.path.read_bytes()[:-4] + b"\0\0\0\0")

    with pytest.raises(WeightsError, match="does not match its recorded sha256"):
        restore_job(run, ctx, dataset(tmp_path / "datasets"), tmp_path / "datasets")


# -- stale temp files -----------------------------------------------------------------------


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    runs, models = tmp_path / "runs", tmp_path / "models"
    (runs / "r1").mkdir(parents=True)
    models.mkdir()
    stale = [runs / "r1" / ".round-0001.safetensors.tmp", models / ".m.safetensors.tmp"]
    kept = [runs / "r1" / "round-0001.safetensors", models / "m.safetensors", models / "x.tmp"]
    for path in stale + kept:
        path.write_bytes(b"data")

    remove_stale_temp_files(runs, models, tmp_path / "absent")

    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if p.exists()] == kept
