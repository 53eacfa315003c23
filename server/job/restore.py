"""Rebuilding jobs after an orchestrator restart: from SQLite rows and the files they name.

Plain functions over the store: ``Federation.resume_unfinished`` decides which run to resume
and what to do when it cannot be.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec
from node.shared.protocol import TrainConfig
from node.shared.weights import sha256_hex
from server.core.federated_eval import summaries
from server.core.job_request import TRAIN_FIELDS
from server.core.sampling import EVERYONE
from server.datasets import DatasetInfo, load_split
from server.job.job import Checkpoint, DataSource, Job, JobContext
from server.shard_files import ShardFile
from server.store import Store

log = structlog.get_logger(__name__)


def restore_job(
    run: dict[str, Any], ctx: JobContext, dataset: DatasetInfo | None, datasets_path: Path
) -> Job:
    """Rebuild a job from SQLite (``ctx.store``) and the checkpoint files it names.

    ``dataset``: the prepared dataset a shards job trained on; a job over the nodes' own
    data has none, and its row records what the server knew of that data instead.
    """
    config = run["config"]
    if config.get("data_mode") == "local":
        dataset = DatasetInfo.from_dict(config["dataset_info"])
    elif dataset is None:
        raise ValueError(f"dataset {run['dataset']!r} is not prepared")
    shards = {node_id: _part(node_id, d) for node_id, d in config["shards"].items()}
    if missing := [str(f.path) for f in shards.values() if f.path and not f.path.is_file()]:
        raise FileNotFoundError(f"shard files are gone: {missing}")
    initial = config["initial"]
    checkpoints = {0: Checkpoint(0, Path(initial["path"]), initial["sha256"])}
    history = run_history(ctx.store, run)
    # A shards job is tested on its dataset's split; an own-data job on the one it named.
    test_set = config.get("test_set", dataset.dataset_id)
    for row in ctx.store.rounds(run["run_id"]):
        if row.round != len(checkpoints):
            raise ValueError(f"round {row.round} recorded after round {len(checkpoints) - 1}")
        checkpoints[row.round] = Checkpoint(row.round, Path(row.checkpoint), row.sha256)
    latest = checkpoints[max(checkpoints)]
    if sha256_hex(latest.path.read_bytes()) != latest.sha256:
        raise WeightsError(f"checkpoint {latest.path} does not match its recorded sha256")
    job = Job(
        ctx,
        job_id=run["run_id"],
        dataset=dataset,
        shards=shards,
        spec=ModelSpec.from_dict(run["model_spec"]),
        config=TrainConfig(**config["train"]),
        rounds=run["rounds"],
        seed=config["seed"],
        partition=config.get("partition", "iid"),
        source=DataSource(config.get("data_mode", "shards"), test_set, config.get("left_out", {})),
        test_split=load_split(datasets_path, test_set, "test") if test_set else None,
        names={node_id: d["name"] for node_id, d in config["shards"].items()},
        checkpoints=checkpoints,
        history=history,
        started_at=run["created"],
    )
    if latest.round > 0 and job.intake.optimizer_keeps_state:
        # Its momentum or moments after the last recorded round: the job goes on as if
        # it had never stopped.
        job.intake.load_optimizer_state(job.files.read_optimizer_state(latest.round))
    return job


def _part(node_id: str, recorded: Mapping[str, Any]) -> ShardFile:
    path = recorded["path"]
    return ShardFile(
        node_id,
        Path(path) if path is not None else None,  # None: the node's own data
        recorded["sha256"],
        recorded["samples"],
        recorded["own"],
        tuple(recorded.get("labels", ())),  # a run from before histograms were recorded
        recorded.get("test_samples", 0),
    )


def run_history(store: Store, run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's closed rounds as the views show them, each with its model's federated
    readings (own data; else None)."""
    by_round = {f["round"]: f for f in summaries(store.node_evaluations(run["run_id"]))}
    return [
        {
            "round": row.round,
            "rounds": run["rounds"],
            "contributors": row.contributors,
            "samples": row.samples,
            "partial": row.partial,
            "missing": row.missing,
            "test_accuracy": row.test_accuracy,
            "test_loss": row.test_loss,
            "seconds": row.closed_at - row.opened_at,
            "federated": by_round.get(row.round),
        }
        for row in store.rounds(run["run_id"])
    ]


def finished_view(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    """What ``Job.view`` said of a run that ended before this server started."""
    federated = summaries(store.node_evaluations(run["run_id"]))
    history = run_history(store, run)
    model = Path(run["model_path"]).name if run["model_path"] else None
    return {
        "run_id": run["run_id"],
        "state": run["status"],
        "dataset": run["dataset"],
        "dataset_source": run["dataset_source"],
        "round": len(history),
        "rounds": run["rounds"],
        "round_open": False,
        "expected": [],
        "received": [],
        "not_waited_for": [],
        "deadline_in_s": None,
        "time_in_round_s": None,
        "partial_rounds": sum(1 for h in history if h["partial"]),
        "aggregation": run["aggregation"],
        "model": run["model_spec"],
        "train": {k: run["config"]["train"].get(k) for k in TRAIN_FIELDS},
        "partition": run["config"].get("partition", "iid"),
        "sampling": run["config"].get("sampling", EVERYONE.view()),
        "sampled": None,  # no round is open
        "data_mode": run["config"].get("data_mode", "shards"),
        "test_set": run["config"].get("test_set", run["dataset"]),
        "left_out": [
            {"node_id": n, "name": n, "why": why}
            for n, why in sorted(run["config"].get("left_out", {}).items())
        ],
        "federated": federated,
        "server_opt": run["config"].get("server_opt", {"strategy": "none"}),
        "started_at": run["created"],
        "elapsed_s": (run["finished"] or run["created"]) - run["created"],
        "history": history,
        "error": run["error"],
        "model_url": f"/models/{model}" if model else None,
        "final_accuracy": run["final_accuracy"],
    }


def remove_stale_temp_files(*folders: Path) -> None:
    """Temp files of writes a crash interrupted: never read as data, so just clear them."""
    for folder in folders:
        for tmp in folder.rglob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
            log.info("stale_temp_file_removed", path=str(tmp))
