"""Benchmark 3: hundreds of nodes on one orchestrator, and the size where it stops coping.

For each size, a fresh ``fedavg-server`` (tiny MLP) and that many virtual nodes
(``vnodes.py``: real WebSocket + HTTP clients) packed into a few processes. All nodes
connect at once; then ``runs`` jobs of ``rounds`` rounds each. Sizes are tried in order and
the search stops at the first that breaks:

- not every node is connected within ``connect_timeout_s``;
- any node sees a failed connection, socket or HTTP request, or a refused upload;
- a round closes with a partial average, or a job fails or times out.

A node whose share of the training split rounds down to nothing sits a job out (the
offline MNIST subset has 4,000 training samples, so at most 4,000 nodes take part); the
table shows how many took part.

Figures: connect latency (WebSocket open -> ``welcome``) per node and for the whole storm;
round cycle time (same definition as ``round_overhead.py``); notification fan-out
(``round_opened`` -> each node's ``weights_ready``); per-node download/upload; server CPU
(from ``/proc``) and peak RSS during each job.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.demo.local_cluster import ClusterError, LocalCluster, free_port
from tests.bench import profile
from tests.bench.common import (
    BenchError,
    RoundTimes,
    Sampler,
    cluster_env,
    loadavg,
    peak_rss_bytes,
    read_jsonl,
    reset_peak_rss,
    rss_bytes,
    run_job,
    spawn,
    spread,
    summary,
    wait_exit,
    weights_file_bytes,
)


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (200, 500, 1000)
    per_pack: int = 250
    hidden: tuple[int, int, int] = (8, 8, 8)
    rounds: int = 3
    runs: int = 3
    connect_timeout_s: float = 120.0
    round_deadline_s: float = 60.0
    job_timeout_s: float = 300.0
    budget_s: float = 420.0  # stop trying larger sizes once this much time has gone
    profile_at: int | None = None  # one extra job under py-spy at this size (not in figures)


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    file_bytes, params = weights_file_bytes(cfg.hidden)
    results: list[dict[str, Any]] = []
    for size in cfg.sizes:
        if results and time.monotonic() - started > cfg.budget_s:
            results.append({"nodes": size, "ok": None, "skipped": "time budget spent"})
            break
        result = _one_size(cfg, size, workdir)
        results.append(result)
        if not result["ok"]:
            break
    passed: list[int] = [r["nodes"] for r in results if r.get("ok")]
    broke = next((r for r in results if r.get("ok") is False), None)
    return {
        "config": {**asdict(cfg), "params": params, "weights_bytes": file_bytes},
        "sizes": results,
        "summary": {
            "largest_ok": max(passed) if passed else None,
            "first_broken": broke["nodes"] if broke else None,
            "broke_because": broke["failure"] if broke else None,
        },
    }


def _wait_connected(cluster: LocalCluster, count: int, timeout: float) -> float:
    """Seconds until ``/health`` counts ``count`` connected nodes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if cluster.request("GET", "/health", timeout=10)["nodes"] >= count:
                return time.monotonic() - t0
        except (OSError, ClusterError):
            pass
        time.sleep(0.1)
    raise BenchError(f"only some of {count} nodes connected within {timeout:.0f} s")


def _one_size(cfg: Config, size: int, workdir: Path) -> dict[str, Any]:
    home = workdir / f"scale-{size}"
    env = cluster_env(cfg.hidden, cfg.round_deadline_s)
    packs = math.ceil(size / cfg.per_pack)
    profiled = cfg.profile_at == size and profile.py_spy() is not None
    logs = [workdir / f"scale-{size}-pack-{i}.jsonl" for i in range(packs)]
    out: dict[str, Any] = {"nodes": size, "packs": packs, "ok": True, "failure": None}
    jobs: list[dict[str, Any]] = []
    with LocalCluster(home=home, port=free_port(), env=env) as cluster:
        cluster.start_server()
        cluster.wait_healthy(timeout=120)
        cluster.request("POST", "/datasets/prepare-mnist", timeout=300)
        pid = cluster.server.pid
        pack_procs = []
        base, extra = divmod(size, packs)
        storm_t0 = time.time()
        cpu0 = _cpu(pid)
        for i in range(packs):
            count = base + (1 if i < extra else 0)
            argv = [
                sys.executable,
                "-m",
                "tests.bench.vnodes",
                "--url",
                cluster.url,
                "--count",
                str(count),
                "--prefix",
                f"s{i}-",
                "--out",
                str(logs[i]),
                "--jobs",
                str(cfg.runs + (1 if profiled else 0)),
            ]
            pack_procs.append(spawn(cluster, f"scale-pack-{i}", argv))
        try:
            out["connect_all_s"] = _wait_connected(cluster, size, cfg.connect_timeout_s)
            out["connect_server_cpu_s"] = _cpu(pid) - cpu0
        except BenchError as exc:
            out.update(ok=False, failure=f"connect: {exc}")
        out["idle_rss"] = rss_bytes(pid)
        pids = {"server": pid, **{p.name: p.pid for p in pack_procs}}
        for index in range(cfg.runs if out["ok"] else 0):
            reset_peak_rss(pid)
            load = loadavg()
            try:
                with Sampler(pids, interval=0.05) as sampler:
                    status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s)
            except (BenchError, ClusterError) as exc:
                out.update(ok=False, failure=f"job {index + 1}: {exc}")
                break
            jobs.append(_job_figures(index, status, times, sampler, pid, pack_procs, load))
            if any(h["partial"] for h in status["history"]):
                out.update(ok=False, failure=f"job {index + 1}: a round closed partial")
                break
        if out["ok"] and profiled:
            rec = profile.Recording(pid, workdir / f"profile-server-{size}-nodes.txt")
            time.sleep(1.0)  # py-spy attaches
            try:
                run_job(cluster, cfg.rounds, cfg.job_timeout_s)
            finally:
                rec.stop()
            if rec.out.exists():
                out["profile"] = {"file": rec.out.name, **profile.summarise(rec.out)}
        for proc in pack_procs:  # nodes without a shard never see "done": stop them
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in pack_procs:
            wait_exit(proc, 60)
    rows = [r for log in logs for r in read_jsonl(log)]
    connected = [r for r in rows if r["ev"] == "connected"]
    out["connect"] = spread([r["t1"] - r["t0"] for r in connected])
    out["connect_storm_s"] = max(r["t1"] for r in connected) - storm_t0 if connected else None
    errors = [
        r
        for r in rows
        if r["ev"] in ("connect_failed", "socket_failed", "http_failed")
        or (r["ev"] == "upload" and r.get("status") != 200)
    ]
    out["client_errors"] = len(errors)
    out["client_error_examples"] = errors[:5]
    if errors and out["ok"]:
        out.update(ok=False, failure=f"{len(errors)} client errors, e.g. {errors[0]}")
    _node_figures(jobs, rows)
    out["jobs"] = jobs
    out["summary"] = _size_summary(jobs)
    out["participants"] = min((j["participants"] for j in jobs), default=None)
    return out


def _cpu(pid: int) -> float:
    from tests.bench.common import cpu_seconds

    return cpu_seconds(pid)


def _job_figures(
    index: int,
    status: dict[str, Any],
    times: RoundTimes,
    sampler: Sampler,
    pid: int,
    packs: list[Any],
    load: list[float],
) -> dict[str, Any]:
    t0, t1 = times.round_start(1), times.end
    wall = t1 - t0
    server_cpu = sampler.cpu_between("server", t0, t1)
    pack_cpu = [sampler.cpu_between(p.name, t0, t1) for p in packs]
    cycles = {r: times.round_end(r) - times.round_start(r) for r in sorted(times.closed)}
    per_round_cpu = {
        r: sampler.cpu_between("server", times.round_start(r), times.round_end(r)) for r in cycles
    }
    return {
        "index": index,
        "run_id": status["run_id"],
        "load_before": load,
        "times": times,
        "cycles": list(cycles.values()),
        "round_cycle_median": summary(cycles.values())["median"],
        "participants": len(status["history"][0]["contributors"]) if status["history"] else 0,
        "wall_s": wall,
        "server_cpu_s": server_cpu,
        "server_cpu_share": None if server_cpu is None else server_cpu / wall,
        "server_cpu_per_round": list(per_round_cpu.values()),
        "packs_cpu_s": sum(c for c in pack_cpu if c is not None),
        "peak_rss": peak_rss_bytes(pid),
    }


def _node_figures(jobs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Add the per-node spreads (notification, download, upload, round latency) to each job."""
    for job in jobs:
        times: RoundTimes = job.pop("times")
        lo, hi = times.started - 1, times.end + 1
        mine = [r for r in rows if lo <= r.get("t0", r.get("t", 0)) <= hi]
        notify: list[float] = []
        train_notify: list[float] = []
        download: list[float] = []
        upload: list[float] = []
        latency: list[float] = []
        frames: dict[tuple[str, int], float] = {}
        for r in mine:
            if r["ev"] == "frame" and r.get("round") in times.closed:
                rnd = r["round"]
                frames[(r["node"], rnd)] = r["t"]
                delay = r["t"] - times.round_start(rnd)
                (train_notify if r["frame"] == "train" else notify).append(delay)
        for r in mine:
            if r["ev"] == "download":
                download.append(r["t1"] - r["t0"])
            elif r["ev"] == "upload" and r.get("status") == 200:
                upload.append(r["t1"] - r["t0"])
                start = frames.get((r["node"], r["round"]))
                if start is not None:
                    latency.append(r["t1"] - start)
        job["notification"] = spread(notify)
        job["train_notification"] = spread(train_notify)
        job["download"] = spread(download)
        job["upload"] = spread(upload)
        job["node_round_latency"] = spread(latency)


def _size_summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    cycles = [c for j in jobs for c in j["cycles"]]
    return {
        "round_cycle": spread(cycles),
        "round_cycle_median_per_job": summary(j["round_cycle_median"] for j in jobs),
        "notification_p50": summary(j["notification"]["p50"] for j in jobs),
        "notification_p95": summary(j["notification"]["p95"] for j in jobs),
        "notification_max": summary(j["notification"]["max"] for j in jobs),
        "node_round_latency_p95": summary(j["node_round_latency"]["p95"] for j in jobs),
        "server_cpu_share": summary(j["server_cpu_share"] for j in jobs),
        "server_cpu_per_round": summary(c for j in jobs for c in j["server_cpu_per_round"]),
        "peak_rss": summary(j["peak_rss"] for j in jobs),
    }
