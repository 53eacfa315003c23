"""Benchmark 7: 100 nodes as ``fedavg-node --virtual N`` processes, the real node program.

The scale case (``scale.py``) packs protocol-only clients that train nothing; this one runs
the real nodes, which import torch and train the seed MLP on their shards. One
``fedavg-server`` with the offline MNIST subset; then, for each layout ``N`` of
``Config.per_process``, ``total / N`` processes of ``--virtual N`` (100 nodes in 1, 2 or 10
processes), each with one torch thread and ``--virtual-workers`` = the cores shared out
over its processes, and every node claiming the same capacity, so each layout trains the
same 100 equal shards. Per layout: a one-round warm-up job (a process's first Adam imports
``torch._dynamo``), then a job of ``rounds`` rounds with every node in every round
(``fraction`` 1).

Figures, per layout:

- **round time**: the cycle of each round (``RoundTimes``: round opened -> the next
  round's weights out), the median over the job's rounds;
- **RSS**: each node process's peak RSS (``VmHWM``) after the job. **RSS per virtual
  node** is the slope of a least-squares line through (virtual nodes in the process, its
  peak RSS) over every process of every layout; the intercept is what a process costs
  before its first node: the torch runtime that a process per node pays 100 times.

The **compute floor** is measured in the same run: a fresh process with one torch thread
runs the nodes' own ``train_locally`` on 100 shards of the same size, one after another,
with the job's training settings; the floor of a round is that time over the cores (every
core training, nothing else). A layout's ratio is its round time over that floor.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.demo.local_cluster import LocalCluster, free_port
from tests.bench.common import (
    REPO,
    BenchError,
    cluster_env,
    cores,
    loadavg,
    peak_rss_bytes,
    run_job,
    summary,
    wait_exit,
    weights_file_bytes,
)

HIDDEN = (256, 128, 64)  # the seed MLP, 784-256-128-64-10
CAPACITY = "1000"  # samples/s every node claims: equal shards in every layout


@dataclass(frozen=True)
class Config:
    total: int = 100
    per_process: tuple[int, ...] = (100, 50, 10)
    rounds: int = 3
    max_batches: int | None = None  # None: each node trains its whole shard
    round_deadline_s: float = 300.0
    job_timeout_s: float = 600.0
    connect_timeout_s: float = 300.0
    floor_repeats: int = 2  # the floor is the fastest of these sequential passes


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    file_bytes, params = weights_file_bytes(HIDDEN)
    env = cluster_env(HIDDEN, cfg.round_deadline_s)
    if cfg.max_batches is not None:
        env["FEDAVG_MAX_BATCHES"] = str(cfg.max_batches)
    layouts: list[dict[str, Any]] = []
    with LocalCluster(home=workdir / "virtual", port=free_port(), env=env) as cluster:
        cluster.start_server()
        cluster.wait_healthy(timeout=120)
        prepared = cluster.request("POST", "/datasets/prepare-mnist", timeout=300)
        for n in cfg.per_process:
            layouts.append(_layout(cluster, cfg, n))
    shard = _train_samples(prepared) // cfg.total
    floor = _floor(cfg, shard)
    return {
        "config": {
            **asdict(cfg),
            "params": params,
            "weights_bytes": file_bytes,
            "cores": cores(),
            "shard_samples": shard,
        },
        "floor": floor,
        "layouts": layouts,
        "summary": _summary(layouts, floor),
    }


def _layout(cluster: LocalCluster, cfg: Config, per_process: int) -> dict[str, Any]:
    """One layout: its processes started and connected, a warm-up job, the measured job."""
    if cfg.total % per_process:
        raise BenchError(f"{cfg.total} nodes do not split into processes of {per_process}")
    processes = cfg.total // per_process
    workers = max(1, cores() // processes)
    load = loadavg()
    connected_before = _connected(cluster)
    procs = []
    t0 = time.monotonic()
    for i in range(processes):
        flags = ("--virtual", str(per_process), "--virtual-workers", str(workers))
        name = f"v{per_process}-p{i}"
        procs.append(cluster.start_node(name, *flags, "--capacity", CAPACITY, threads=1))
    try:
        cluster.wait_nodes(connected_before + cfg.total, timeout=cfg.connect_timeout_s)
        connect_s = time.monotonic() - t0
        run_job(cluster, 1, cfg.job_timeout_s, {"train": {"max_batches": 1}})
        status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s)
        rss = [peak_rss_bytes(p.pid) for p in procs]
    finally:
        for proc in procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            wait_exit(proc, 60)
    cycles = [times.round_end(r) - times.round_start(r) for r in sorted(times.opened)]
    trained = {len(times.accepted.get(r, {})) for r in times.opened}
    if trained != {cfg.total} or any(h["partial"] for h in status["history"]):
        raise BenchError(f"{per_process} per process: rounds trained {trained} of {cfg.total}")
    return {
        "per_process": per_process,
        "processes": processes,
        "workers": workers,
        "connect_s": connect_s,
        "round_s": summary(cycles),
        "job_s": times.end - times.started,
        "final_accuracy": status["history"][-1].get("test_accuracy"),
        "process_peak_rss": rss,
        "total_peak_rss": sum(rss),
        "load_before": load,
        "load_after": loadavg(),
    }


def _connected(cluster: LocalCluster) -> int:
    return sum(1 for n in cluster.request("GET", "/nodes")["nodes"] if n["connected"])


def _train_samples(prepared: dict[str, Any]) -> int:
    for key in ("train_samples", "train"):
        if isinstance(prepared.get(key), int):
            return int(prepared[key])
    raise BenchError(f"prepare-mnist did not say its training samples: {prepared}")


FLOOR_SCRIPT = """
import json, sys, time, torch
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import TrainConfig
from node.trainer import split_validation, train_locally
torch.set_num_threads(1)
nodes, shard, repeats, max_batches = (int(a) for a in sys.argv[1:5])
spec = ModelSpec()  # the server's default model: the seed MLP
state = init_state(spec, 0)
config = TrainConfig(max_batches=max_batches or None)
gen = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (shard, 1, 28, 28), dtype=torch.uint8, generator=gen)
y = torch.randint(0, 10, (shard,), generator=gen)
passes = []
for _ in range(repeats + 1):  # the first pass warms up (imports, allocator), out of the floor
    t0 = time.perf_counter()
    for i in range(nodes):
        tx, ty, vx, vy = split_validation(x, y, 0.1, seed=i)  # the nodes' VALIDATION_SPLIT
        train_locally(spec, state, tx, ty, config, device=torch.device("cpu"), seed=i, val=(vx, vy))
    passes.append(time.perf_counter() - t0)
print(json.dumps({"passes": passes[1:]}))
"""


def _floor(cfg: Config, shard: int) -> dict[str, Any]:
    """The 100 nodes' training alone, one after another on one thread, in a fresh process."""
    argv = [sys.executable, "-c", FLOOR_SCRIPT, str(cfg.total), str(shard)]
    argv += [str(cfg.floor_repeats), str(cfg.max_batches or 0)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise BenchError(f"the compute floor failed:\n{proc.stderr[-2000:]}")
    sequential = min(json.loads(proc.stdout.splitlines()[-1])["passes"])
    return {
        "sequential_s": sequential,
        "round_floor_s": sequential / min(cores(), cfg.total),
        "load": loadavg(),
    }


def rss_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (virtual nodes, peak RSS)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        raise BenchError("RSS per virtual node needs processes of at least two sizes")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    return slope, mean_y - slope * mean_x


def _summary(layouts: list[dict[str, Any]], floor: dict[str, Any]) -> dict[str, Any]:
    points = [(x["per_process"], r) for x in layouts for r in x["process_peak_rss"]]
    per_node, per_process = rss_line(points)
    base = max(layouts, key=lambda x: x["processes"])  # the most process-like layout
    for x in layouts:
        x["ratio_floor"] = x["round_s"]["median"] / floor["round_floor_s"]
        x["ratio_most_processes"] = x["round_s"]["median"] / base["round_s"]["median"]
    total = layouts[0]["processes"] * layouts[0]["per_process"]
    return {
        "rss_per_virtual_node": per_node,
        "rss_per_process": per_process,
        "rss_all_processes_estimate": total * (per_process + per_node),
        "most_processes": base["processes"],
    }
