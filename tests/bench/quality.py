"""Benchmark 7 (``--quality``): test accuracy per round for each strategy, split and model,
beside the centralised reference with the same samples, epochs and model, from the same run.

One federation, started once, as in the zoo case (``zoo.py``): a ``fedavg-server`` and N
``fedavg-node`` (4 by default) on the offline MNIST subset (4,000 train / 1,000 test),
equal claimed capacities and ``SHARD_OVERLAP=0``, so the shards partition the training
split; 1 local epoch of Adam (lr 1e-3, batch 32) a round, seed 0, a float32 wire. A warm-up
job of one round comes first, out of the tables (a node's first Adam imports
``torch._dynamo``). Then one job per cell, each naming everything it varies in its JSON body
(``POST /train/mnist?epochs=R``), and the server's answer is checked to have run it:

- **split** (``partition``): ``iid``; ``dirichlet:0.5`` and ``dirichlet:0.1`` (label skew,
  Hsu et al. 2019); ``classes:2`` (McMahan et al. 2017's pathological split). The server
  refuses ``classes:k`` when nodes x k < the 10 labels (a label would reach no node), so
  classes:2 runs on 5 nodes: a fifth node joins for its cells and leaves after them;
- **strategy** (:data:`STRATEGIES`): FedAvg; FedAvgM; FedAdam; FedProx (see there for the
  one value of each hyper-parameter, chosen once, not tuned per cell);
- **model**: the MLP (784-256-128-64-10) and the CNN (conv 32/64, FC 512), as ``zoo.MODELS``.

Each model's **centralised reference** trains the job's own spec (as the server answered
it) from the same round-0 weights, with the nodes' fused Adam, lr and batch size, on all
4,000 training images for R x local-epochs epochs in a fresh process, evaluated after every
epoch as the server evaluates every round (``accuracy.run_centralised``). It does not depend
on the split or the strategy, so it runs once per model, right after that model's first job.
Round r is compared with epoch r: equal epochs over the data.

**Time bound.** MLP jobs take about 1.5 s on a quiet 2-core machine, CNN jobs about 25 s
(5 rounds), so the whole grid is about 8-9 min there. A cell is skipped (and reported as
skipped) when starting it would take the case past ``budget_s`` by the last job's time of
the same model; cells run in :func:`groups`' order (what the targets name first), so a loaded
machine loses the Dirichlet CNN cells first.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.shared.model import ModelSpec
from server.core.job_request import train_view
from server.core.partition import parse_partition
from server.demo.local_cluster import LocalCluster, free_port
from tests.bench.accuracy import central_flags, run_centralised
from tests.bench.cnn import Training, training_env
from tests.bench.common import (
    BenchError,
    cores,
    loadavg,
    run_job,
    start_probed_federation,
    start_probed_node,
    threads_per_node,
    timed,
)
from tests.bench.zoo import MODELS, describe

SPLITS = ("iid", "dirichlet:0.5", "dirichlet:0.1", "classes:2")
"""The splits in the order the report shows them: more label skew to the right."""
RUN_ORDER = ("iid", "classes:2", "dirichlet:0.5", "dirichlet:0.1")
"""The order cells run in: the two the targets name first, in case the time bound bites."""

FEDPROX_MU = 0.01
STRATEGIES: dict[str, dict[str, Any]] = {
    "FedAvg": {"strategy": "none"},
    # Hsu et al. 2019's server momentum 0.9 at server lr 1.0 (the issue's choice).
    "FedAvgM": {"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.9},
    # Flower's server lr 0.1 is tuned for nodes on SGD: FedAdam's first step moves every
    # weight by about server_lr (m / sqrt(v) is about sign(delta)), and 0.1 is more than the
    # MLP's whole initial weight scale (1/sqrt(784) = 0.036) and about 3x what a node's Adam
    # moves a weight in a round (lr 1e-3 x 28 steps). 0.01 keeps the server's step within
    # the nodes' own; Flower's beta1 0.9, beta2 0.99, tau 1e-3 stay.
    "FedAdam": {"strategy": "fedadam", "server_lr": 0.01},
    # The middle of Li et al. 2020's grid {0.001, 0.01, 0.1, 1}, one value for every cell.
    "FedProx": {"strategy": "none", "train": {"proximal_mu": FEDPROX_MU}},
}
"""Each strategy as a job's JSON body asks for it."""


@dataclass(frozen=True)
class Config(Training):
    models: tuple[str, ...] = ("mlp", "cnn")
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    splits: tuple[str, ...] = SPLITS
    nodes: int = 4
    rounds: int = 5
    warmup: bool = True
    budget_s: float = 600.0  # the case's time bound (see the module's docstring)
    job_timeout_s: float = 600.0


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    threads = threads_per_node(cfg.nodes)
    env = training_env(ModelSpec(), cfg, cfg.job_timeout_s, FEDAVG_SEED="0")
    env["FEDAVG_WIRE_DTYPE"] = "float32"
    t0 = time.monotonic()
    state: dict[str, dict[str, Any]] = {m: {"cells": [], "centralised": None} for m in cfg.models}
    labels: dict[str, dict[str, list[int]]] = {}
    with LocalCluster(home=workdir / "quality", port=free_port(), env=env) as cluster:
        with timed() as start:
            start_probed_federation(cluster, workdir, "quality", cfg.nodes, threads)
        with timed() as warmup:
            if cfg.warmup:
                body = {"model": MODELS["mlp"], "train": {"max_batches": 1}}
                run_job(cluster, 1, cfg.job_timeout_s, body)
        for split, model in groups(cfg):
            _set_nodes(cluster, workdir, nodes_for(split, cfg.nodes), threads)
            labels.setdefault(split, _labels(cluster, split))
            for strategy in cfg.strategies:
                _step(cluster, cfg, state[model], (model, split, strategy), threads, t0)
    return {
        "config": {
            **asdict(cfg),
            "strategy_bodies": {s: STRATEGIES[s] for s in cfg.strategies},
            "threads_per_node": threads,
            "central_threads": threads,
            "central_epochs": cfg.rounds * cfg.local_epochs,
            "cores": cores(),
            "start_s": start["s"],
            "warmup_s": warmup["s"] if cfg.warmup else None,
        },
        "labels": labels,
        "models": [_finish(name, state[name]) for name in cfg.models],
    }


def nodes_for(split: str, nodes: int) -> int:
    """The nodes a split runs on: ``classes:k`` needs nodes x k >= the 10 labels (the server
    refuses a plan where a label reaches no node), so classes:2 runs on 5 nodes, not 4."""
    if split.startswith("classes:"):
        return max(nodes, math.ceil(10 / int(split.split(":", 1)[1])))
    return nodes


def groups(cfg: Config) -> list[tuple[str, str]]:
    """(split, model) in the order they run: what the targets name first (every split of
    the first model, iid and classes:2 of the others), the extra nodes' splits after the
    others of their tier, then the rest; so the time bound cuts the Dirichlet CNN first."""
    order = {s: i for i, s in enumerate(RUN_ORDER)}

    def key(pair: tuple[str, str]) -> tuple[int, int, int, int]:
        split, model = pair
        tier = 0 if model == cfg.models[0] or split in ("iid", "classes:2") else 1
        more = int(nodes_for(split, cfg.nodes) > cfg.nodes)
        return tier, more, order.get(split, len(order)), cfg.models.index(model)

    return sorted(((s, m) for s in cfg.splits for m in cfg.models), key=key)


def _set_nodes(cluster: LocalCluster, workdir: Path, count: int, threads: int) -> None:
    """Start or stop the extra nodes (``node-5``...) so that ``count`` are connected."""
    alive = [p.name for p in cluster.procs if p.name.startswith("node-") and p.alive()]
    for i in range(len(alive) + 1, count + 1):
        start_probed_node(cluster, f"node-{i}", workdir / f"quality-node-{i}.jsonl", threads)
    for name in sorted(alive, key=lambda n: int(n.split("-")[1]))[count:]:
        cluster.kill(name, signal.SIGTERM)
    deadline = time.monotonic() + 300
    while _connected(cluster) != count:
        if time.monotonic() > deadline:
            raise BenchError(f"{_connected(cluster)} nodes connected, not {count}")
        time.sleep(0.2)


def _connected(cluster: LocalCluster) -> int:
    return sum(1 for n in cluster.request("GET", "/nodes")["nodes"] if n["connected"])


def _labels(cluster: LocalCluster, split: str) -> dict[str, list[int]]:
    """Each node's label histogram under ``split``: the plan its jobs will get (it is a
    function of the seed, the node set and the partition)."""
    plan = cluster.request("POST", f"/train/mnist/prepare?partition={split}", timeout=120)
    return {s["name"]: s["labels"] for s in plan["shards"]}


def _step(
    cluster: LocalCluster,
    cfg: Config,
    state: dict[str, Any],
    cell: tuple[str, str, str],
    threads: int,
    t0: float,
) -> None:
    """One cell of a model, or its skip when it would pass the time bound; the model's
    centralised reference after its first job (which names the spec it trains)."""
    model, split, strategy = cell
    if time.monotonic() - t0 + state.get("last_s", 0.0) > cfg.budget_s:
        state["cells"].append({"split": split, "strategy": strategy, "skipped": "time bound"})
        return
    row = _cell(cluster, cfg, model, split, strategy)
    row["nodes"] = _connected(cluster)
    state["cells"].append(row)
    state["last_s"] = row["job_s"]
    if state["centralised"] is None:
        flags = central_flags(ModelSpec.from_dict(row["spec"]), cfg.train, fused=True)
        epochs = cfg.rounds * cfg.local_epochs
        central = run_centralised(cluster.home, epochs, threads, cfg.job_timeout_s, flags)
        state["centralised"] = central


def _finish(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """A model's cells in the report's order, each with its gap to the reference."""
    central, rows = state["centralised"], state["cells"]
    order = {s: i for i, s in enumerate(SPLITS)}
    rows.sort(
        key=lambda r: (order.get(r["split"], len(order)), list(STRATEGIES).index(r["strategy"]))
    )
    spec = next((r["spec"] for r in rows if "spec" in r), None)
    for row in rows:
        if central is not None and "final_accuracy" in row:
            row["gap"] = row["final_accuracy"] - central["final_accuracy"]
            row["per_round_gap"] = _gaps(row["per_round_accuracy"], central)
    return {
        "name": name,
        "label": describe(ModelSpec.from_dict(spec)) if spec else name,
        "spec": spec,
        "centralised": central,
        "cells": rows,
    }


def _gaps(per_round: list[float | None], central: dict[str, Any]) -> list[float | None]:
    """Round r's accuracy minus the reference's after epoch r (equal epochs)."""
    epochs: list[float] = central["per_epoch_accuracy"]
    return [
        None if a is None or i >= len(epochs) else a - epochs[i] for i, a in enumerate(per_round)
    ]


def job_body(model: str, split: str, strategy: str) -> dict[str, Any]:
    """The JSON body of one cell's ``POST /train/mnist``."""
    chosen = STRATEGIES[strategy]
    body: dict[str, Any] = {"model": MODELS[model], "partition": split}
    body.update({k: v for k, v in chosen.items() if k != "train"})
    if "train" in chosen:
        body["train"] = dict(chosen["train"])
    return body


def _cell(
    cluster: LocalCluster, cfg: Config, model: str, split: str, strategy: str
) -> dict[str, Any]:
    """One job, checked to have run what it asked for; its per-round test accuracy."""
    load = loadavg()
    body = job_body(model, split, strategy)
    status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s, body)
    _check_ran(status, cfg, model, split, body)
    return {
        "split": split,
        "strategy": strategy,
        "run_id": status["run_id"],
        "spec": status["model"],
        "server_opt": status["server_opt"],
        "proximal_mu": status["train"]["proximal_mu"],
        "partial_rounds": status["partial_rounds"],
        "final_accuracy": status["final_accuracy"],
        "per_round_accuracy": [times.history[r]["test_accuracy"] for r in sorted(times.history)],
        "per_round_loss": [times.history[r]["test_loss"] for r in sorted(times.history)],
        "job_s": times.end - times.started,
        "load_before": load,
        "load_after": loadavg(),
    }


def _check_ran(
    status: dict[str, Any], cfg: Config, model: str, split: str, body: dict[str, Any]
) -> None:
    """The server's answer names the model, split, server optimizer and training asked for."""
    want_train = train_view(cfg.train) | body.get("train", {})
    want_opt = {k: v for k, v in body.items() if k not in ("model", "partition", "train")}
    problems = []
    if status["model"]["arch"] != MODELS[model]["arch"]:
        problems.append(f"model {status['model']['arch']}")
    if status["partition"] != str(parse_partition(split)):
        problems.append(f"partition {status['partition']}")
    if any(status["server_opt"].get(k) != v for k, v in want_opt.items()):
        problems.append(f"server_opt {status['server_opt']}")
    if status["train"] != want_train:
        problems.append(f"train {status['train']}")
    if problems:
        raise BenchError(f"job {status['run_id']} asked {body}, ran " + "; ".join(problems))
