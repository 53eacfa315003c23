"""Benchmark 7 (``--quality``): test accuracy per round for each strategy, split and model,
beside the centralised reference with the same samples, epochs and model, from the same run.

One federation per seed, as in the zoo case (``zoo.py``): a ``fedavg-server`` and N
``fedavg-node`` (4 by default) on the offline MNIST subset (4,000 train / 1,000 test),
equal claimed capacities, ``SHARD_OVERLAP=0`` and ``VALIDATION_SPLIT=0``, so the shards
partition the training split and the nodes train on all of it, as the reference does;
1 local epoch of Adam (lr 1e-3, batch 32) a round, a float32 wire. The seed
(``FEDAVG_SEED``) sets the shard plan, the round-0 weights and the nodes' batch order; the
MLP runs on every seed, the CNN on the first only (its jobs take 15x longer). A warm-up job
of one round comes first, out of the tables (a node's first Adam imports
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
it) from the seed's round-0 weights, with the nodes' fused Adam, lr and batch size, on all
4,000 training images for R x local-epochs epochs in a fresh process, evaluated after every
epoch as the server evaluates every round (``accuracy.run_centralised``). It does not depend
on the split or the strategy, so it runs once per model and seed, right after that model's
first job. Round r is compared with epoch r: equal epochs over the data. A cell's figure is
the mean over its seeds, and its gap the mean of each seed's gap to its own reference.

**The tuning grid.** A comparison at one client setting favours whichever side it suits.
So on the MLP with IID shards, the strategies of ``Config.tuning_strategies`` also run at
each (lr, batch size) of ``Config.tuning``, and FedAvg also at 2 local epochs a round
(``tuning_epochs``, McMahan et al.'s E), each beside a centralised reference at the same
setting and equal epochs (rounds x E), and the target is judged again with each side at its
own best (lr, batch) for each E: at E = 2 both sides train 10 epochs.

**Time bound.** MLP jobs take about 1.5 s on a quiet 2-core machine (3 s at E = 2), CNN jobs
about 25 s (5 rounds), so the whole case is about 20 min there. A cell is skipped (and reported as
skipped) when starting it would take the case past ``budget_s`` by the last job's time of
the same model; cells run in :func:`groups`' order (what the targets name first), so a loaded
machine loses the Dirichlet CNN cells first.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.shared.model import ModelSpec
from node.shared.protocol import TrainConfig
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

TUNING_STRATEGIES: dict[str, dict[str, Any]] = {
    "FedAvg": STRATEGIES["FedAvg"],
    # Momentum 0.5: 0.9 overshoots in 5 rounds (the main grid shows it); server lr above 1
    # with nodes on Adam overshoots too (tried: lr 2 and 3 lost 8 and 58 pp in 5 rounds).
    "FedAvgM-0.5": {"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.5},
    # FedAvg whose nodes keep their Adam moments from round to round, as the centralised
    # reference's one Adam keeps them from epoch to epoch: a fresh Adam on every global
    # model spends its first steps re-estimating them, on a quarter of the data.
    "FedAvg+state": {"strategy": "none", "train": {"keep_optimizer_state": True}},
}
"""The strategies of the IID tuning grid."""


@dataclass(frozen=True)
class Config(Training):
    models: tuple[str, ...] = ("mlp", "cnn")
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    splits: tuple[str, ...] = SPLITS
    nodes: int = 4
    rounds: int = 5
    # Each seed is its own federation (FEDAVG_SEED: the shard plan, the round-0 weights and
    # the nodes' batch order). Every model runs on the first seed; ``every_seed`` models on
    # all of them (a CNN job takes ~25 s, an MLP job ~1.5 s).
    seeds: tuple[int, ...] = (0, 1, 2)
    every_seed: tuple[str, ...] = ("mlp",)
    # The IID tuning grid: the MLP's FedAvg and its centralised reference over the same
    # client (lr, batch size) pairs, so each side is compared at its own best setting.
    tuning: tuple[tuple[float, int], ...] = ((1e-3, 16), (1e-3, 32), (2e-3, 16), (2e-3, 32))
    tuning_strategies: tuple[str, ...] = ("FedAvg", "FedAvgM-0.5", "FedAvg+state")
    # The grid's local epochs per round, each setting beside a reference of rounds x that
    # many epochs (equal epochs); beyond the main grid's own, only these strategies run.
    tuning_epochs: tuple[int, ...] = (1, 2)
    more_epochs_strategies: tuple[str, ...] = ("FedAvg",)
    warmup: bool = True
    budget_s: float = 1800.0  # the case's time bound (see the module's docstring)
    job_timeout_s: float = 600.0


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    threads = threads_per_node(cfg.nodes)
    t0 = time.monotonic()
    state: dict[str, dict[str, Any]] = {m: {"cells": [], "centralised": {}} for m in cfg.models}
    tuning: dict[str, Any] = {"cells": [], "centralised": []}
    labels: dict[str, dict[str, list[int]]] = {}
    starts, warmups = [], []
    for seed in cfg.seeds:
        models = [m for m in cfg.models if seed == cfg.seeds[0] or m in cfg.every_seed]
        env = training_env(ModelSpec(), cfg, cfg.job_timeout_s, FEDAVG_SEED=str(seed))
        env["FEDAVG_WIRE_DTYPE"] = "float32"
        # The nodes train on their whole shard, as the reference trains on the whole split
        # (a node holds out 10% for validation by default: 3,600 samples, not 4,000).
        env["VALIDATION_SPLIT"] = "0"
        home = workdir / f"quality-seed-{seed}"
        with LocalCluster(home=home, port=free_port(), env=env) as cluster:
            with timed() as start:
                start_probed_federation(cluster, workdir, f"quality-{seed}", cfg.nodes, threads)
            starts.append(start["s"])
            with timed() as warmup:
                if cfg.warmup:
                    body = {"model": MODELS["mlp"], "train": {"max_batches": 1}}
                    run_job(cluster, 1, cfg.job_timeout_s, body)
            warmups.append(warmup["s"])
            for split, model in groups(cfg, models):
                _set_nodes(cluster, workdir, nodes_for(split, cfg.nodes), threads)
                if seed == cfg.seeds[0]:
                    labels.setdefault(split, _labels(cluster, split))
                for strategy in cfg.strategies:
                    cell = (model, split, strategy, seed)
                    _step(cluster, cfg, state[model], cell, threads, t0)
            if "mlp" in models and "iid" in cfg.splits and cfg.tuning:
                _set_nodes(cluster, workdir, cfg.nodes, threads)
                _tune(cluster, cfg, tuning, seed, threads, t0)
    return {
        "config": {
            **asdict(cfg),
            "strategy_bodies": {s: STRATEGIES[s] for s in cfg.strategies},
            "tuning_bodies": {s: TUNING_STRATEGIES[s] for s in cfg.tuning_strategies},
            "threads_per_node": threads,
            "central_threads": threads,
            "central_epochs": cfg.rounds * cfg.local_epochs,
            "cores": cores(),
            "start_s": starts,
            "warmup_s": warmups if cfg.warmup else None,
        },
        "labels": labels,
        "models": [_finish(name, state[name]) for name in cfg.models],
        "tuning": finish_tuning(cfg, tuning, state.get("mlp")),
    }


def nodes_for(split: str, nodes: int) -> int:
    """The nodes a split runs on: ``classes:k`` needs nodes x k >= the 10 labels (the server
    refuses a plan where a label reaches no node), so classes:2 runs on 5 nodes, not 4."""
    if split.startswith("classes:"):
        return max(nodes, math.ceil(10 / int(split.split(":", 1)[1])))
    return nodes


def groups(cfg: Config, models: list[str] | None = None) -> list[tuple[str, str]]:
    """(split, model) in the order they run: what the targets name first (every split of
    the first model, iid and classes:2 of the others), the extra nodes' splits after the
    others of their tier, then the rest; so the time bound cuts the Dirichlet CNN first."""
    order = {s: i for i, s in enumerate(RUN_ORDER)}

    def key(pair: tuple[str, str]) -> tuple[int, int, int, int]:
        split, model = pair
        tier = 0 if model == cfg.models[0] or split in ("iid", "classes:2") else 1
        more = int(nodes_for(split, cfg.nodes) > cfg.nodes)
        return tier, more, order.get(split, len(order)), cfg.models.index(model)

    chosen = cfg.models if models is None else models
    return sorted(((s, m) for s in cfg.splits for m in chosen), key=key)


def _set_nodes(cluster: LocalCluster, workdir: Path, count: int, threads: int) -> None:
    """Start or stop the extra nodes (``node-5``...) so that ``count`` are connected."""
    alive = [p.name for p in cluster.procs if p.name.startswith("node-") and p.alive()]
    for i in range(len(alive) + 1, count + 1):
        log = workdir / f"{cluster.home.name}-node-{i}.jsonl"  # one per seed
        start_probed_node(cluster, f"node-{i}", log, threads)
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
    cell: tuple[str, str, str, int],
    threads: int,
    t0: float,
) -> None:
    """One cell of a model on one seed, or its skip when it would pass the time bound; the
    model's centralised reference for the seed after its first job there (which names the
    spec it trains)."""
    model, split, strategy, seed = cell
    if _over_budget(cfg, state, t0):
        state["cells"].append(
            {"split": split, "strategy": strategy, "seed": seed, "skipped": "time bound"}
        )
        return
    row = _cell(cluster, cfg, split, job_body(model, split, strategy), strategy)
    row.update(seed=seed, nodes=_connected(cluster))
    state["cells"].append(row)
    state["last_s"] = row["job_s"]
    if seed not in state["centralised"]:
        state["centralised"][seed] = _central(cluster, cfg, row["spec"], cfg.train, seed, threads)


def _over_budget(cfg: Config, state: dict[str, Any], t0: float) -> bool:
    last: float = state.get("last_s", 0.0)
    return time.monotonic() - t0 + last > cfg.budget_s


def _central(
    cluster: LocalCluster,
    cfg: Config,
    spec: dict[str, Any],
    train: TrainConfig,
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """The centralised reference: ``spec`` trained with ``train`` on the cluster's whole
    training split for the job's epochs (rounds x ``train``'s local epochs), from the seed's
    round-0 weights."""
    flags = [*central_flags(ModelSpec.from_dict(spec), train, fused=True), "--seed", str(seed)]
    epochs = cfg.rounds * train.local_epochs
    return run_centralised(cluster.home, epochs, threads, cfg.job_timeout_s, flags)


@dataclass(frozen=True)
class Setting:
    """One client setting of the tuning grid."""

    lr: float
    batch_size: int
    local_epochs: int

    def keys(self) -> dict[str, Any]:
        return asdict(self)


def _tune(
    cluster: LocalCluster,
    cfg: Config,
    tuning: dict[str, Any],
    seed: int,
    threads: int,
    t0: float,
) -> None:
    """The MLP on IID shards at each (lr, batch size, local epochs) of the tuning grid, each
    strategy of the grid and the centralised reference with the same setting."""
    for epochs in cfg.tuning_epochs:
        names = cfg.tuning_strategies
        if epochs != cfg.local_epochs:
            names = tuple(n for n in names if n in cfg.more_epochs_strategies)
        for lr, batch in cfg.tuning:
            setting = Setting(lr, batch, epochs)
            _tune_setting(cluster, cfg, tuning, (seed, threads, t0), setting, names)


def _tune_setting(
    cluster: LocalCluster,
    cfg: Config,
    tuning: dict[str, Any],
    run: tuple[int, int, float],
    setting: Setting,
    names: tuple[str, ...],
) -> None:
    """One setting of the grid on one seed: each strategy's job, then the reference."""
    seed, threads, t0 = run
    spec, main = None, setting == Setting(cfg.lr, cfg.batch_size, cfg.local_epochs)
    for name in names:
        if main and TUNING_STRATEGIES[name] == STRATEGIES.get(name):
            continue  # the main grid's cell: finish_tuning takes it from there
        if _over_budget(cfg, tuning, t0):
            continue  # finish_tuning reports what did not run
        chosen = TUNING_STRATEGIES[name]
        body = {"model": MODELS["mlp"], "partition": "iid", **chosen}
        body["train"] = {**chosen.get("train", {}), **setting.keys()}
        row = _cell(cluster, cfg, "iid", body, name)
        row.update(seed=seed, **setting.keys())
        tuning["cells"].append(row)
        tuning["last_s"], spec = row["job_s"], row["spec"]
    if spec is not None and not main:  # the main grid has that reference
        train = dataclasses.replace(cfg.train, **setting.keys())
        central = _central(cluster, cfg, spec, train, seed, threads)
        tuning["centralised"].append({**central, **setting.keys()})


def _finish(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """A model's cells in the report's order, each the mean over its seeds with its gap to
    the reference (paired: each seed's job against the same seed's reference)."""
    centrals: dict[int, dict[str, Any]] = state["centralised"]
    order = {s: i for i, s in enumerate(SPLITS)}
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in state["cells"]:
        by_cell.setdefault((row["split"], row["strategy"]), []).append(row)
    rows = [over_seeds(runs, centrals) for runs in by_cell.values()]
    rows.sort(
        key=lambda r: (order.get(r["split"], len(order)), list(STRATEGIES).index(r["strategy"]))
    )
    spec = next((r["spec"] for r in rows if "spec" in r), None)
    return {
        "name": name,
        "label": describe(ModelSpec.from_dict(spec)) if spec else name,
        "spec": spec,
        "centralised": central_over_seeds(list(centrals.values())),
        "cells": rows,
    }


def over_seeds(
    runs: list[dict[str, Any]], centrals: Mapping[int, dict[str, Any]]
) -> dict[str, Any]:
    """One cell from its runs (one per seed): the mean final and per-round accuracy, their
    range, and the mean paired gap to each seed's centralised reference. A cell whose every
    run was skipped is a skip."""
    first = runs[0]
    done = [r for r in runs if "final_accuracy" in r]
    head = {"split": first["split"], "strategy": first["strategy"], "runs": runs}
    if not done:
        return {**head, "skipped": first.get("skipped", "not run")}
    finals = [r["final_accuracy"] for r in done]
    out = {
        **head,
        "seeds": [r["seed"] for r in done],
        "spec": done[0]["spec"],
        "server_opt": done[0]["server_opt"],
        "nodes": done[0].get("nodes"),
        "final_accuracy": statistics.fmean(finals),
        "final_min": min(finals),
        "final_max": max(finals),
        "per_round_accuracy": _mean_lists([r["per_round_accuracy"] for r in done]),
        "partial_rounds": sum(r["partial_rounds"] for r in done),
        "job_s": statistics.fmean(r["job_s"] for r in done),
    }
    paired = [r for r in done if r["seed"] in centrals]
    if paired:
        gaps = [r["final_accuracy"] - centrals[r["seed"]]["final_accuracy"] for r in paired]
        out["gap"] = statistics.fmean(gaps)
        out["per_round_gap"] = _mean_lists(
            [_gaps(r["per_round_accuracy"], centrals[r["seed"]]) for r in paired]
        )
    return out


def central_over_seeds(centrals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The references of several seeds as one: the mean per epoch, the range of the last."""
    if not centrals:
        return None
    finals = [c["final_accuracy"] for c in centrals]
    return {
        "final_accuracy": statistics.fmean(finals),
        "final_min": min(finals),
        "final_max": max(finals),
        "per_epoch_accuracy": _mean_lists([c["per_epoch_accuracy"] for c in centrals]),
        "train_wall_s": statistics.fmean(c["train_wall_s"] for c in centrals),
        "seeds": [c["seed"] for c in centrals],
        "runs": centrals,
    }


def finish_tuning(
    cfg: Config, tuning: dict[str, Any], mlp: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The tuning grid's rows, the main grid's own setting among them (its FedAvg cells and
    references), and the best of each side at each local-epoch count: the best strategy at
    its best (lr, batch) against the centralised reference at its own best, equal epochs."""
    if not cfg.tuning or mlp is None:
        return None
    base = Setting(cfg.lr, cfg.batch_size, cfg.local_epochs).keys()
    cells = list(tuning["cells"])
    cells += [
        {**r, **base}
        for r in mlp["cells"]
        if r["split"] == "iid" and r["strategy"] == "FedAvg" and "final_accuracy" in r
    ]
    centrals = list(tuning["centralised"])
    centrals += [{**c, **base} for c in mlp["centralised"].values()]
    grid = {Setting(lr, batch, e) for lr, batch in cfg.tuning for e in cfg.tuning_epochs}
    rows = []
    # the main setting, even when not in the grid; by local epochs, then lr and batch
    for setting in sorted(
        {Setting(**base), *grid}, key=lambda s: (s.local_epochs, s.lr, s.batch_size)
    ):
        here = {c["seed"]: c for c in centrals if _setting_of(c) == setting}
        row: dict[str, Any] = {**setting.keys()}
        row["centralised"] = central_over_seeds(list(here.values()))
        row["strategies"] = {}
        for name in cfg.tuning_strategies:
            runs = [c for c in cells if c["strategy"] == name and _setting_of(c) == setting]
            if runs:
                row["strategies"][name] = over_seeds(runs, here)
        rows.append(row)
    by_epochs = [
        {"local_epochs": e, **_best_of([r for r in rows if r["local_epochs"] == e])}
        for e in sorted({r["local_epochs"] for r in rows})
    ]
    judged = [b for b in by_epochs if b["best_gap"] is not None]
    best = max(judged, key=lambda b: b["best_gap"]) if judged else {"best_gap": None}
    return {"rows": rows, "by_epochs": by_epochs, **best}


def _setting_of(row: dict[str, Any]) -> Setting:
    return Setting(row["lr"], row["batch_size"], row["local_epochs"])


def _best_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each side at its best setting among ``rows`` (by the mean over seeds)."""
    centrals = [(r["centralised"]["final_accuracy"], r) for r in rows if r["centralised"]]
    feds = [
        (c["final_accuracy"], name, r)
        for r in rows
        for name, c in r["strategies"].items()
        if "final_accuracy" in c
    ]
    if not centrals or not feds:
        return {"best_gap": None}
    c_acc, c_row = max(centrals, key=lambda t: t[0])
    f_acc, f_name, f_row = max(feds, key=lambda t: t[0])
    return {
        "best_central": {"accuracy": c_acc, **_setting_of(c_row).keys()},
        "best_federated": {"accuracy": f_acc, "strategy": f_name, **_setting_of(f_row).keys()},
        "best_gap": f_acc - c_acc,
    }


def _mean_lists(lists: list[list[float | None]]) -> list[float | None]:
    """Element-wise means; None where any list has None or is too short."""
    width = max(len(xs) for xs in lists)
    out: list[float | None] = []
    for i in range(width):
        column = [xs[i] if i < len(xs) else None for xs in lists]
        numbers = [x for x in column if x is not None]
        out.append(statistics.fmean(numbers) if len(numbers) == len(column) else None)
    return out


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
    cluster: LocalCluster, cfg: Config, split: str, body: dict[str, Any], strategy: str
) -> dict[str, Any]:
    """One job, checked to have run what its body asked for; its per-round test accuracy."""
    load = loadavg()
    status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s, body)
    _check_ran(status, cfg, split, body)
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


def _check_ran(status: dict[str, Any], cfg: Config, split: str, body: dict[str, Any]) -> None:
    """The server's answer names the model, split, server optimizer and training asked for."""
    want_train = train_view(cfg.train) | body.get("train", {})
    want_opt = {k: v for k, v in body.items() if k not in ("model", "partition", "train")}
    problems = []
    if status["model"]["arch"] != body["model"]["arch"]:
        problems.append(f"model {status['model']['arch']}")
    if status["partition"] != str(parse_partition(split)):
        problems.append(f"partition {status['partition']}")
    if any(status["server_opt"].get(k) != v for k, v in want_opt.items()):
        problems.append(f"server_opt {status['server_opt']}")
    if status["train"] != want_train:
        problems.append(f"train {status['train']}")
    if problems:
        raise BenchError(f"job {status['run_id']} asked {body}, ran " + "; ".join(problems))
