"""Benchmark 5: the CNN (McMahan et al., 2017) on real nodes, each figure against a reference
measured in the same run: node compute per sample against centralised training, round
overhead against its floor and as a share of the round, accuracy against centralised.

Real processes as in benchmark 1: one ``fedavg-server`` and N ``fedavg-node`` (4 by
default), all wrapped in timing probes (``probes.py``), the server's default model set to the
CNN from the environment (``MODEL_ARCH=cnn``: two 5x5 convolutions of 32 and 64 channels,
2x2 max pooling, FC 512; 1,663,370 parameters on 1x28x28), local training from
``FEDAVG_LR``, ``FEDAVG_BATCH_SIZE``, ``FEDAVG_LOCAL_EPOCHS``, ``FEDAVG_OPTIMIZER`` and
``FEDAVG_MAX_BATCHES``. The data is the offline MNIST subset (4,000 train / 1,000 test),
split IID with no overlap (``SHARD_OVERLAP=0``) and equal claimed capacities, so the shards
partition the training split: 1,000 images a node with 4 nodes, of which each node trains
on 900 and validates on 100 (its default ``VALIDATION_SPLIT``). Each *run* is one job of R
rounds on the same warm cluster: the floor is measured right before it, the centralised
reference right after it.

Definitions (per round r, each node n that the server accepted an upload from):

- **trained(n, r)**: the samples its epochs went through: the sample count it reported
  (its training split), capped at ``FEDAVG_MAX_BATCHES`` x batch size, x local epochs.
- **node s/sample** = the ``seconds`` it reported (its ``train_locally`` wall time: the model
  around the downloaded tensors, the epochs, validation) / trained(n, r). The run's figure
  is the median over nodes x rounds.
- **node CPU/sample** = the CPU seconds of the node's process during that ``train_locally``
  call (the probe's ``cpu``) / trained(n, r): what a sample costs the node, however the
  cores were shared.
- **centralised s/sample** (and CPU/sample): the same CNN, initial weights, optimiser (the
  nodes' fused Adam), learning rate, batch size and batch cap, trained on the whole
  training split for R x local-epochs epochs in one fresh process with the nodes' torch
  threads (``threads_per_node``: cores // nodes, at least 1; inter-op 1, as ``fedavg-node``
  sets them), right after the job; an epoch's training wall (CPU) time / its samples,
  median over epochs. Evaluation after each epoch is not in it.
- **ratio** = node / centralised, for the wall time and for the CPU. With more node threads
  than cores (4 x 1 on 2 cores) the nodes train at the same time and share the cores, so
  the wall ratio holds the sharing (about nodes x threads / cores) and the CPU ratio does
  not.
- **federation s/sample** = (the last node's end of training - the first node's start, in
  round r) / the sum of trained(n, r): the whole machine's cost of a sample while all nodes
  train; **concurrency** = the sum of the nodes' train wall times / that span (the nodes
  training at once, on average).
- **overhead**, **cycle**, **floor**, critical path: as in benchmark 1
  (``round_overhead.py``), for the CNN's weights file; **overhead share** = overhead / cycle.
- **accuracy**: the job's final test accuracy (the server's evaluation of the last global
  model on the test split) and the centralised model's after its last epoch, evaluated the
  same way on the same split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from node.shared.model import ModelSpec, parameter_count
from node.shared.protocol import TrainConfig
from server.demo.local_cluster import LocalCluster, free_port
from tests.bench.accuracy import central_flags, run_centralised
from tests.bench.common import (
    BenchError,
    RoundTimes,
    across_runs,
    cluster_env,
    cores,
    read_jsonl,
    run_job,
    spec_weights_bytes,
    start_probed_federation,
    summary,
    threads_per_node,
    timed,
    trained_samples,
)
from tests.bench.round_overhead import analyse_run, measure_runs, summarise

SPEC = ModelSpec(arch="cnn")
TARGET_SHARE = 0.10  # "The CNN (4 nodes): overhead is at most 10% of the round" (next issue)


@dataclass(frozen=True)
class Training:
    """A job's local training, made the server's defaults by :func:`training_env` (the CNN
    and the zoo cases share it)."""

    batch_size: int = 32
    local_epochs: int = 1
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    max_batches: int | None = None  # FEDAVG_MAX_BATCHES (smoke sizes); None: whole epochs

    @property
    def train(self) -> TrainConfig:
        return TrainConfig(
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            local_epochs=self.local_epochs,
            max_batches=self.max_batches,
        )


@dataclass(frozen=True)
class Config(Training):
    nodes: int = 4
    rounds: int = 3
    runs: int = 3
    floor_repeats: int = 3
    job_timeout_s: float = 600.0


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    home = workdir / "cnn"
    threads = threads_per_node(cfg.nodes)
    file_bytes, params = spec_weights_bytes(SPEC)
    epochs = cfg.rounds * cfg.local_epochs
    env = training_env(SPEC, cfg, cfg.job_timeout_s)
    with LocalCluster(home=home, port=free_port(), env=env) as cluster:
        server_probe, node_probes = start_probed_federation(
            cluster, workdir, "cnn", cfg.nodes, threads
        )
        # A node process's first CNN round pays a one-off warm-up (a second or two here):
        # one round, not in the figures, so that every measured round is a warm one.
        with timed() as warmup:
            warm, _ = run_job(cluster, 1, cfg.job_timeout_s)
        # The reference trains the job's own spec (the dataset's normalisation included).
        flags = central_flags(ModelSpec.from_dict(warm["model"]), cfg.train, fused=True)

        def centralised() -> dict[str, Any]:
            return run_centralised(home, epochs, threads, cfg.job_timeout_s, flags)

        pids = {p.name: p.pid for p in cluster.procs}
        runs = measure_runs(cluster, cfg, pids, file_bytes, params, after_job=centralised)
        server_rows = read_jsonl(server_probe)
        node_rows = {n: read_jsonl(p) for n, p in node_probes.items()}
    results = [_analyse(r, server_rows, node_rows, cfg, file_bytes) for r in runs]
    return {
        "config": {
            **asdict(cfg),
            "spec": SPEC.to_dict(),
            "model": describe_spec(),
            "params": params,
            "weights_bytes": file_bytes,
            "threads_per_node": threads,
            "central_threads": threads,
            "central_epochs": epochs,
            "cores": cores(),
            "warmup_s": warmup["s"],
            "target_share": TARGET_SHARE,
        },
        "runs": results,
        "summary": _summarise(results),
    }


def training_env(spec: ModelSpec, cfg: Training, deadline_s: float, **extra: str) -> dict[str, str]:
    """The cluster's environment: ``spec``'s arch and widths and ``cfg``'s training as the
    server's defaults; IID shards of equal size that partition the training split."""
    return cluster_env(
        spec.hidden,
        deadline_s,
        MODEL_ARCH=spec.arch,
        FEDAVG_LR=str(cfg.lr),
        FEDAVG_BATCH_SIZE=str(cfg.batch_size),
        FEDAVG_LOCAL_EPOCHS=str(cfg.local_epochs),
        FEDAVG_OPTIMIZER=cfg.optimizer,
        FEDAVG_MAX_BATCHES=str(cfg.max_batches or ""),  # "": whole epochs, whatever is set
        SHARD_OVERLAP="0",
        NODE_CAPACITY="1000",  # every node claims the same: equal shares, no start-up benchmark
        **extra,
    )


def _analyse(
    run: dict[str, Any],
    server_rows: list[dict[str, Any]],
    node_rows: dict[str, list[dict[str, Any]]],
    cfg: Config,
    file_bytes: int,
) -> dict[str, Any]:
    """Benchmark 1's analysis of the job's rounds, then the per-sample compute figures
    beside the centralised reference measured right after the job."""
    base = analyse_run(run, server_rows, node_rows)
    if base["download_bytes"] != file_bytes:  # the server's model is not the CNN
        raise BenchError(
            f"nodes downloaded {base['download_bytes']} B weights files, the CNN's are "
            f"{file_bytes} B: the server did not take MODEL_ARCH=cnn"
        )
    times: RoundTimes = run["times"]
    samples = [_node_samples(r, times.reports.get(r["round"], {}), cfg) for r in base["rounds"]]
    flat = [x for per_round in samples for x in per_round]
    central = run["after_job"]
    central_wall = _per_sample(central["epoch_train_s"], central["epoch_samples"])
    central_cpu = _per_sample(central["epoch_cpu_s"], central["epoch_samples"])
    node_wall = summary(x["s_per_sample"] for x in flat)["median"]
    node_cpu = summary(x["cpu_per_sample"] for x in flat)["median"]
    spans = [_federation(per_round) for per_round in samples]
    federation = summary(s["s_per_sample"] for s in spans)["median"]
    return {
        **base,
        "node_samples": samples,
        "federation": spans,
        "centralised": central,
        "compute": {
            "node_s_per_sample": node_wall,
            "node_cpu_per_sample": node_cpu,
            "node_trained": summary(x["trained"] for x in flat)["median"],
            "central_s_per_sample": central_wall,
            "central_cpu_per_sample": central_cpu,
            "ratio_compute": _ratio(node_wall, central_wall),
            "ratio_cpu": _ratio(node_cpu, central_cpu),
            "federation_s_per_sample": federation,
            "ratio_federation": _ratio(federation, central_wall),
            "concurrency": summary(s["concurrency"] for s in spans)["median"],
            "fed_accuracy": run["final_accuracy"],
            "central_accuracy": central["final_accuracy"],
            "accuracy_gap": _gap(run["final_accuracy"], central["final_accuracy"]),
        },
    }


def _node_samples(
    rnd: dict[str, Any], reports: dict[str, dict[str, Any]], cfg: Config
) -> list[dict[str, Any]]:
    """Each accepted node's reported samples and seconds in one round, with its probe's CPU
    and train window."""
    out = []
    for node, report in sorted(reports.items()):
        steps = rnd["nodes"].get(node, {})
        trained = cfg.local_epochs * trained_samples(
            int(report["samples"]), cfg.batch_size, cfg.max_batches
        )
        seconds, cpu = report.get("seconds"), steps.get("compute_cpu")
        out.append(
            {
                "node": node,
                "round": rnd["round"],
                "samples": report["samples"],
                "trained": trained,
                "seconds": seconds,
                "cpu": cpu,
                "s_per_sample": seconds / trained if seconds is not None else None,
                "cpu_per_sample": cpu / trained if cpu is not None else None,
                "train_t0": steps.get("train_t0"),
                "train_t1": steps.get("train_t1"),
            }
        )
    return out


def _federation(per_round: list[dict[str, Any]]) -> dict[str, float | None]:
    """The round's training span over all nodes, per sample of all of them, and how many
    nodes trained at once on average over it."""
    starts = [x["train_t0"] for x in per_round if x["train_t0"] is not None]
    ends = [x["train_t1"] for x in per_round if x["train_t1"] is not None]
    if not starts or not ends or len(starts) != len(per_round):
        return {"span_s": None, "s_per_sample": None, "concurrency": None}
    span = max(ends) - min(starts)
    busy = sum(x["train_t1"] - x["train_t0"] for x in per_round)
    return {
        "span_s": span,
        "s_per_sample": span / sum(x["trained"] for x in per_round),
        "concurrency": busy / span if span > 0 else None,
    }


def _per_sample(seconds: list[float], samples: int) -> float | None:
    median = summary(seconds)["median"]
    return None if median is None or not samples else float(median) / samples


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


COMPUTE_KEYS = (
    "node_s_per_sample",
    "node_cpu_per_sample",
    "node_trained",
    "central_s_per_sample",
    "central_cpu_per_sample",
    "ratio_compute",
    "ratio_cpu",
    "federation_s_per_sample",
    "ratio_federation",
    "concurrency",
    "fed_accuracy",
    "central_accuracy",
    "accuracy_gap",
)


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Benchmark 1's summary (no ratio target: the CNN's target is its overhead share), the
    compute figures beside it, and the share against ``TARGET_SHARE``."""
    out = summarise(results, target_ratio=None)
    flat = [r["compute"] for r in results]
    out.update({key: across_runs(flat, key) for key in COMPUTE_KEYS})
    share = out["overhead_share"]["median"]
    out["target_share"] = TARGET_SHARE
    out["share_met"] = share is not None and share <= TARGET_SHARE
    return out


def describe_spec() -> str:
    """One line for the report: the model and its size."""
    convs = " -> ".join(f"conv {SPEC.kernel}x{SPEC.kernel} x {c}" for c in SPEC.channels)
    head = " -> ".join(f"FC {h}" for h in SPEC.hidden)
    return (
        f"{convs} (each + ReLU + 2x2 max-pool) -> {head} -> {SPEC.num_classes}, "
        f"{parameter_count(SPEC):,} parameters"
    )
