"""Benchmark 1: what a round costs beyond the nodes' own training, against the wire's floor.

Real processes: one ``fedavg-server`` and N ``fedavg-node``, each wrapped in timing probes
(``probes.py``), training a ~10 M-parameter MLP for one batch per round. Each *run* is one
job of R rounds on the same warm cluster; the floor (``floor.py``) is measured right before
each run, so every ratio compares numbers taken minutes apart on the same machine.

Definitions (all timestamps are ``time.time()`` on this one machine):

- **start(r)**: the server's ``round_opened``(r). Round 1 opens right before the ``train``
  frames go out; round r > 1 opens as soon as round r - 1's average is in the next weights
  file, right before ``weights_ready`` is pushed.
- **end(r)**: ``round_opened``(r + 1), the next global weights published (averaged into the
  file, sha256 taken). The server evaluates, checkpoints and records round r *after* that,
  in the background (``round_closed``(r) comes after ``round_opened``(r + 1)), so that
  work is not part of the cycle. The last round has no next round: it ends at its own
  ``round_closed``, after its evaluation and checkpoint, which are in its cycle.
- **cycle(r)** = end(r) - start(r): notification to the next global model out.
- **critical node**: the node whose upload the server accepted last (it closed the round).
- **compute(r)**: the critical node's ``train_locally`` wall time (what it reports as
  ``seconds``: the model around the downloaded tensors, one batch, validation).
- **overhead(r)** = cycle(r) - compute(r); its **share** of the round = overhead(r) / cycle(r).
- **critical path**: cycle(r) split at the critical node's timestamps, with no gaps:
  notification, download (wake-up + GET + sha256), decode, compute, encode (header +
  views of the tensors), upload (until the server holds the whole body), server fold
  (decode + lock + fold + record), close (= end(r) - the server's acceptance of the critical
  upload: waiting for round r - 1's after-work if it is still running, the average into
  the next weights file + sha256, opening round r + 1; for the last round also the
  evaluation, checkpoint and record).
- **notification(r)** = the last node's receipt of the ``weights_ready``/``train`` frame
  for round r - start(r).
- Off the critical path, reported per round: **publish** (``Job._weights_file``: average
  into the file + sha256, inside close), **settle** (``Job._settle``: evaluation +
  checkpoint + record + ``round_closed``), **evaluation** and **checkpoint** (inside settle),
  and **settle wait** (how long round r's close waited for round r - 1's settle).

**bfloat16 wire.** The wire dtype is a server setting read at start, so after the float32
runs (and the profiles) the server is restarted on the same home and port with
``FEDAVG_WIRE_DTYPE=bfloat16``; the same node processes reconnect (their own backoff) and
the same number of runs follows. Those runs' floor is measured for the bfloat16 weights file
(half the bytes; its average part is unchanged: the wire dtype does not touch the averaging),
and the float32 floor just before it, so their overhead is compared with both.

**Seed MLP** (issue 18, target 1; :func:`run_seed`). After that, the server's default model
(784-256-128-64-10) on a probed cluster of its own: equal IID shards that partition the
offline training split (``SHARD_OVERLAP=0``, equal ``NODE_CAPACITY``; 1,000 images a node
with 4 nodes), no validation split, batch 64, whole local epochs. The same runs and
analysis, plus per round **slowest compute** (the largest ``seconds`` the accepted uploads
report: each node's ``train_locally`` wall time), **seed overhead** = cycle - slowest
compute, and **overhead / compute**, whose target is at most 0.20.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from server.demo.local_cluster import LocalCluster, free_port
from tests.bench import profile, unit_costs
from tests.bench.common import (
    BenchError,
    RoundTimes,
    across_runs,
    cluster_env,
    cores,
    cpu_seconds,
    loadavg,
    machine_cpu,
    measure_floor,
    read_jsonl,
    run_job,
    start_probed_federation,
    start_probed_server,
    summary,
    threads_per_node,
    weights_file_bytes,
)

PHASES = ("notify", "download", "decode", "compute", "encode", "upload", "server_fold", "close")


@dataclass(frozen=True)
class Seed:
    """The seed MLP sub-run (:func:`run_seed`): the server's default model, whole epochs."""

    nodes: int = 4
    rounds: int = 5
    runs: int = 3
    batch_size: int = 64
    floor_repeats: int = 3
    max_batches: int | None = None  # smoke sizes; None: the whole epoch
    warmup: bool = True  # one round first, not in the figures (a fresh process's first)
    profile: bool = False
    job_timeout_s: float = 600.0


@dataclass(frozen=True)
class Config:
    hidden: tuple[int, int, int] = (4096, 1536, 64)
    nodes: int = 4
    rounds: int = 5
    runs: int = 3
    batch_size: int = 32
    floor_repeats: int = 3
    profile: bool = False
    job_timeout_s: float = 600.0
    # After the float32 runs: restart the server with a bfloat16 wire and measure again.
    bf16: bool = True
    # Then the seed MLP on a cluster of its own (None: not measured).
    seed: Seed | None = field(default_factory=lambda: Seed())


BF16_ENV = {"FEDAVG_WIRE_DTYPE": "bfloat16"}


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    home = workdir / "overhead"
    env = cluster_env(
        cfg.hidden,
        cfg.job_timeout_s,
        FEDAVG_MAX_BATCHES="1",
        FEDAVG_BATCH_SIZE=str(cfg.batch_size),
    )
    file_bytes, params = weights_file_bytes(cfg.hidden)
    bf16_bytes, _ = weights_file_bytes(cfg.hidden, "bfloat16")
    bf16_probe = workdir / "overhead-server-bf16.jsonl"
    profiles: dict[str, Any] = {}
    bf16_runs: list[dict[str, Any]] = []
    restart_s: float | None = None
    bf16_wall_s: float | None = None
    with LocalCluster(home=home, port=free_port(), env=env) as cluster:
        server_probe, node_probe = start_probed_federation(
            cluster, workdir, "overhead", cfg.nodes, threads_per_node(cfg.nodes)
        )
        units = unit_costs.measure(cfg.hidden)
        pids = {p.name: p.pid for p in cluster.procs}
        runs = measure_runs(cluster, cfg, pids, file_bytes, params)
        if cfg.profile and profile.py_spy() is not None:
            profiles = profile_run(cluster, cfg, workdir)
        if cfg.bf16:
            t0 = time.perf_counter()
            restart_s = _restart_server(cluster, cfg, bf16_probe, BF16_ENV)
            pids["server"] = cluster.server.pid
            bf16_runs = measure_runs(cluster, cfg, pids, bf16_bytes, params, file_bytes)
            bf16_wall_s = time.perf_counter() - t0
        server_rows = read_jsonl(server_probe)
        bf16_server_rows = read_jsonl(bf16_probe)
        node_rows = {n: read_jsonl(p) for n, p in node_probe.items()}
    results = [analyse_run(r, server_rows, node_rows) for r in runs]
    out: dict[str, Any] = {
        "config": {
            **asdict(cfg),
            "params": params,
            "weights_bytes": file_bytes,
            "threads_per_node": threads_per_node(cfg.nodes),
            "cores": cores(),
        },
        "runs": results,
        "summary": summarise(results),
        "profiles": profiles,
        "unit_costs": units,
    }
    if cfg.seed is not None:
        out["seed"] = run_seed(cfg.seed, workdir)
    if cfg.bf16:
        bf16 = [analyse_run(r, bf16_server_rows, node_rows) for r in bf16_runs]
        _check_wire(results, bf16)
        summary_bf16 = summarise(bf16)
        f32_overhead = out["summary"]["overhead"]["median"]
        summary_bf16["overhead_vs_float32"] = (
            summary_bf16["overhead"]["median"] / f32_overhead if f32_overhead else None
        )
        out["bf16"] = {
            "config": {
                "wire_dtype": "bfloat16",
                "env": BF16_ENV,
                "weights_bytes": bf16_bytes,
                "server_restart_s": restart_s,
                "wall_s": bf16_wall_s,  # restart + its runs: what the bf16 part added
            },
            "runs": bf16,
            "summary": summary_bf16,
        }
    return out


class Jobs(Protocol):
    """What :func:`measure_runs` needs of a benchmark's config."""

    @property
    def runs(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def nodes(self) -> int: ...
    @property
    def floor_repeats(self) -> int: ...
    @property
    def job_timeout_s(self) -> float: ...


def measure_runs(
    cluster: LocalCluster,
    cfg: Jobs,
    pids: dict[str, int],
    payload_bytes: int,
    params: int,
    float32_bytes: int | None = None,
    after_job: Callable[[], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``cfg.runs`` jobs on the warm cluster, each right after its floor for
    ``payload_bytes``; with ``float32_bytes`` (a narrower wire) the float32 floor too, just
    before that. ``after_job`` runs right after each job (a reference measured beside it);
    what it returns is the run's ``after_job``."""
    runs: list[dict[str, Any]] = []
    for index in range(cfg.runs):
        floor_f32 = (
            measure_floor(float32_bytes, params, cfg.nodes, cfg.floor_repeats)
            if float32_bytes is not None
            else None
        )
        floor = measure_floor(payload_bytes, params, cfg.nodes, cfg.floor_repeats)
        load = loadavg()
        cpu0, machine0 = {k: cpu_seconds(p) for k, p in pids.items()}, machine_cpu()
        status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s)
        cpu1, machine1 = {k: cpu_seconds(p) for k, p in pids.items()}, machine_cpu()
        cpu = {k: cpu1[k] - cpu0[k] for k in pids}
        busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
        runs.append(
            {
                "index": index,
                "floor": floor,
                **({"floor_float32": floor_f32} if floor_f32 is not None else {}),
                "load_before": load,
                "load_after": loadavg(),
                "run_id": status["run_id"],
                "times": times,
                "final_accuracy": status.get("final_accuracy"),
                "cpu": {
                    "by_process_s": cpu,
                    "ours_s": sum(cpu.values()),
                    "machine_busy_s": busy,
                    "machine_total_s": total,
                },
                **({"after_job": after_job()} if after_job is not None else {}),
            }
        )
    return runs


def _restart_server(
    cluster: LocalCluster, cfg: Config, probe_file: Path, env: dict[str, str]
) -> float:
    """Stop the server, start it again on the same home and port with ``env`` added, and
    wait until the running node processes have reconnected; returns the seconds it took."""
    t0 = time.perf_counter()
    cluster.kill("server", signal.SIGTERM)
    start_probed_server(cluster, probe_file, env)
    cluster.wait_healthy(timeout=120)
    cluster.request("POST", "/datasets/prepare-mnist", timeout=300)
    cluster.wait_nodes(cfg.nodes, timeout=120)
    return time.perf_counter() - t0


def _check_wire(float32: list[dict[str, Any]], narrow: list[dict[str, Any]]) -> None:
    """The nodes must really have downloaded the smaller file, or the setting did not apply."""
    wide = summary(r["download_bytes"] for r in float32)["median"]
    small = summary(r["download_bytes"] for r in narrow)["median"]
    if wide is None or small is None or small > 0.6 * wide:
        raise BenchError(
            f"the bfloat16 runs downloaded {small} B weights files against {wide} B in float32: "
            "the server did not switch its wire dtype"
        )


def profile_run(
    cluster: LocalCluster, cfg: Jobs, workdir: Path, prefix: str = "profile"
) -> dict[str, Any]:
    """One extra job (not in the figures) with py-spy on the server and on node-1."""
    out: dict[str, Any] = {}
    targets = {"server": cluster.server.pid}
    node1 = next(p for p in cluster.procs if p.name == "node-1")
    targets["node-1"] = node1.pid
    recordings = {
        k: profile.Recording(pid, workdir / f"{prefix}-{k}.txt") for k, pid in targets.items()
    }
    time.sleep(1.0)  # py-spy attaches
    try:
        run_job(cluster, cfg.rounds, cfg.job_timeout_s)
    finally:
        for rec in recordings.values():
            rec.stop()
    for key, rec in recordings.items():
        if rec.out.exists():
            out[key] = {"file": rec.out.name, **profile.summarise(rec.out)}
    return out


# -- analysis ---------------------------------------------------------------------------------


def _round_of_weights(path: str) -> int | None:
    """``/sync/weights?job=..&round=k`` serves the weights that round k + 1 trains from."""
    query = parse_qs(urlsplit(path).query)
    return int(query["round"][0]) + 1 if "round" in query else None


def _upload_round(path: str) -> int | None:
    query = parse_qs(urlsplit(path).query)
    return int(query["round"][0]) if "round" in query else None


def _of_job(path: str) -> str | None:
    return parse_qs(urlsplit(path).query).get("job", [None])[0]


def _node_rounds(
    rows: list[dict[str, Any]], t0: float, t1: float, job_id: str
) -> dict[int, dict[str, Any]]:
    """One node's probe rows inside a job window, grouped by the round they served. Transfers
    of another job are skipped: with short rounds the window's margin reaches the next job's
    first download."""
    per: dict[int, dict[str, Any]] = {}
    current: int | None = None
    for row in sorted((r for r in rows if t0 <= r["t0"] <= t1), key=lambda r: r["t0"]):
        ev = row["ev"]
        if ev in ("download", "upload") and _of_job(row["path"]) not in (None, job_id):
            continue
        if ev == "frame":
            if row["frame"] == "train":
                per.setdefault(row["round"], {}).setdefault("frame", row["t0"])
            elif row["frame"] == "weights_ready":
                per.setdefault(row["round"] + 1, {}).setdefault("frame", row["t0"])
        elif ev == "download":
            if "/sync/weights" in row["path"]:
                current = _round_of_weights(row["path"])
                if current is not None:
                    per.setdefault(current, {})["download"] = row
            else:
                per.setdefault(0, {})["shard"] = row
        elif ev == "upload":
            r = _upload_round(row["path"])
            if r is not None:
                per.setdefault(r, {})["upload"] = row
        elif ev in ("decode", "train", "encode", "build_model", "validate") and current is not None:
            per.setdefault(current, {}).setdefault(ev, row)
    return per


def _in_window(rows: list[dict[str, Any]], ev: str, t0: float, t1: float) -> list[dict[str, Any]]:
    return [r for r in rows if r["ev"] == ev and t0 < r["t1"] <= t1]


def _of_round(rows: list[dict[str, Any]], ev: str, r: int) -> list[dict[str, Any]]:
    return [x for x in rows if x["ev"] == ev and x.get("round") == r]


def _seconds(rows: list[dict[str, Any]]) -> float:
    return float(sum(x["t1"] - x["t0"] for x in rows))


def analyse_run(
    run: dict[str, Any],
    server_rows: list[dict[str, Any]],
    node_rows: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """One job's rounds from the server's events and everyone's probe rows: cycle, compute,
    overhead, the critical path and each node's steps (the definitions at the top)."""
    times: RoundTimes = run["times"]
    t_end = times.end
    window = (times.started - 1, t_end + 1)
    nodes = {n: _node_rounds(rows, *window, run["run_id"]) for n, rows in node_rows.items()}
    # This job's server rows only: round numbers repeat from job to job.
    server = [x for x in server_rows if times.started <= x["t0"] <= t_end]
    uploads = {(r["node"], int(r["round"])): r for r in server if r["ev"] == "job_upload"}
    rounds = []
    for r in sorted(times.closed):
        start, end = times.round_start(r), times.round_end(r)
        accepted = times.accepted.get(r, {})
        if not accepted:
            raise BenchError(f"round {r} of {run['run_id']} has no accepted uploads")
        crit = max(accepted, key=lambda n: accepted[n])
        c = nodes[crit][r]
        cu = uploads[(crit, r)]
        dur = {k: c[k]["t1"] - c[k]["t0"] for k in ("download", "decode", "train", "encode")}
        path = {
            "notify": c["frame"] - start,
            "download": c["download"]["t1"] - c["frame"],
            "decode": c["decode"]["t1"] - c["download"]["t1"],
            "compute": c["train"]["t1"] - c["decode"]["t1"],
            "encode": c["encode"]["t1"] - c["train"]["t1"],
            "upload": cu["t0"] - c["encode"]["t1"],
            "server_fold": accepted[crit] - cu["t0"],
            "close": end - accepted[crit],
        }
        # Attribution of the server's rows to round r:
        # - decode, fold and the average (result) by time, in (start(r), end(r)]: round r's
        #   uploads come after round_opened(r) (no node has its weights before), and its
        #   folds and average end before round_opened(r + 1) (both under the job's lock, in
        #   upload and _close_round, before the next round opens); round r + 1's uploads
        #   cannot start before round_opened(r + 1). So the windows are disjoint and exact.
        # - publish, settle and checkpoint carry their round (probes.py).
        # - evaluate carries none and runs after round_opened(r + 1), overlapping round
        #   r + 1: it is attributed to the settle it ran inside (settle(r) awaits it).
        settles = _of_round(server, "settle", r)
        evaluations = [
            x
            for x in server
            if x["ev"] == "evaluate"
            and any(s["t0"] <= x["t0"] and x["t1"] <= s["t1"] for s in settles)
        ]
        folds = _in_window(server, "fold", start, end)
        result = _seconds(_in_window(server, "result", start, end))
        decodes = _in_window(server, "decode", start, end)
        previous = _of_round(server, "settle", r - 1)
        settle_wait = max([0.0, *(s["t1"] - accepted[crit] for s in previous)])
        per_node = {}
        for n, rs in nodes.items():
            d = rs.get(r, {})
            su = uploads.get((n, r))
            per_node[n] = {
                "notify": d["frame"] - start if "frame" in d else None,
                "download": d["download"]["t1"] - d["download"]["t0"] if "download" in d else None,
                "upload_wire": su["t0"] - d["upload"]["t0"] if su and "upload" in d else None,
                "upload_call": d["upload"]["t1"] - d["upload"]["t0"] if "upload" in d else None,
                "compute": d["train"]["t1"] - d["train"]["t0"] if "train" in d else None,
                "compute_cpu": d["train"].get("cpu") if "train" in d else None,
                "train_t0": d["train"]["t0"] if "train" in d else None,
                "train_t1": d["train"]["t1"] if "train" in d else None,
                "build_model": d["build_model"]["t1"] - d["build_model"]["t0"]
                if "build_model" in d
                else None,
            }
        cycle = end - start
        compute = dur["train"]
        rounds.append(
            {
                "round": r,
                "last": r + 1 not in times.opened,
                "cycle": cycle,
                "compute": compute,
                "overhead": cycle - compute,
                "overhead_share": (cycle - compute) / cycle,
                "critical_node": crit,
                "critical_path": path,
                "critical_path_other": cycle - sum(path.values()),
                "notification": _max(v["notify"] for v in per_node.values()),
                "download_max": _max(v["download"] for v in per_node.values()),
                "upload_max": _max(v["upload_wire"] for v in per_node.values()),
                "aggregation": _seconds(folds) + result,
                "fold_each_max": _max(x["t1"] - x["t0"] for x in folds),
                "server_decode": _seconds(decodes),
                "result": result,
                "publish": _seconds(_of_round(server, "publish", r)),
                "settle": _seconds(settles),
                "settle_wait": settle_wait,
                "evaluation": _seconds(evaluations),
                "checkpoint": _seconds(_of_round(server, "checkpoint", r)),
                "compute_max": _max(v["compute"] for v in per_node.values()),
                "build_model_max": _max(v["build_model"] for v in per_node.values()),
                "download_bytes": c["download"].get("bytes"),
                "nodes": per_node,
                "test_accuracy": times.history[r].get("test_accuracy"),
            }
        )
    floor = run["floor"]["floor_s"]
    med = {
        k: summary(x[k] for x in rounds)["median"]
        for k in (
            "cycle",
            "compute",
            "overhead",
            "overhead_share",
            "notification",
            "download_max",
            "upload_max",
            "aggregation",
            "server_decode",
            "publish",
            "settle",
            "settle_wait",
            "evaluation",
            "checkpoint",
            "compute_max",
            "build_model_max",
        )
    }
    med_path = {k: summary(x["critical_path"][k] for x in rounds)["median"] for k in PHASES}
    out = {
        "index": run["index"],
        "run_id": run["run_id"],
        "load_before": run["load_before"],
        "load_after": run["load_after"],
        "floor": run["floor"],
        "rounds": rounds,
        "median": med,
        "median_critical_path": med_path,
        "ratio_overhead": med["overhead"] / floor,
        "ratio_cycle": med["cycle"] / floor,
        "download_bytes": summary(x["download_bytes"] for x in rounds)["median"],
        "final_accuracy": run["final_accuracy"],
        "cpu": _cpu_figures(run["cpu"], len(rounds)),
    }
    if "floor_float32" in run:  # a narrower wire: also against the float32 floor beside it
        out["floor_float32"] = run["floor_float32"]
        out["ratio_overhead_float32_floor"] = med["overhead"] / run["floor_float32"]["floor_s"]
    return out


def _cpu_figures(cpu: dict[str, Any], rounds: int) -> dict[str, Any]:
    """CPU of our processes per round, and how busy the whole machine was meanwhile."""
    return {
        **cpu,
        "ours_per_round_s": cpu["ours_s"] / max(1, rounds),
        "server_per_round_s": cpu["by_process_s"].get("server", 0.0) / max(1, rounds),
        "machine_busy_share": cpu["machine_busy_s"] / cpu["machine_total_s"]
        if cpu["machine_total_s"]
        else None,
        "others_busy_share": (cpu["machine_busy_s"] - cpu["ours_s"]) / cpu["machine_total_s"]
        if cpu["machine_total_s"]
        else None,
    }


def _max(values: Any) -> float | None:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return max(xs) if xs else None


def summarise(results: list[dict[str, Any]], target_ratio: float | None = 2.0) -> dict[str, Any]:
    """Each run's figures, median [min, max] over runs; ``target_met`` is overhead / floor
    against ``target_ratio`` (None: no such target)."""
    flat = [
        {
            **r["median"],
            **{f"path_{k}": v for k, v in r["median_critical_path"].items()},
            "cpu_ours_per_round": r["cpu"]["ours_per_round_s"],
            "cpu_server_per_round": r["cpu"]["server_per_round_s"],
            "machine_busy_share": r["cpu"]["machine_busy_share"],
            "others_busy_share": r["cpu"]["others_busy_share"],
            "floor": r["floor"]["floor_s"],
            "floor_loopback": r["floor"]["loopback_s"],
            "floor_average": r["floor"]["average_s"],
            "ratio_overhead": r["ratio_overhead"],
            "ratio_cycle": r["ratio_cycle"],
            "download_bytes": r["download_bytes"],
            **(
                {
                    "floor_float32": r["floor_float32"]["floor_s"],
                    "ratio_overhead_float32_floor": r["ratio_overhead_float32_floor"],
                }
                if "floor_float32" in r
                else {}
            ),
        }
        for r in results
    ]
    keys = flat[0].keys() if flat else []
    out: dict[str, Any] = {k: across_runs(flat, k) for k in keys}
    ratio = out["ratio_overhead"]["median"]
    out["target_ratio"] = target_ratio
    out["target_met"] = (
        None if target_ratio is None else ratio is not None and ratio <= target_ratio
    )
    return out


# -- the seed MLP ------------------------------------------------------------------------------

SEED_HIDDEN = (256, 128, 64)  # the server's default model: 784-256-128-64-10
SEED_TARGET = 0.20  # issue 18, target 1: overhead at most 20 % of the slowest node's compute
SEED_KEYS = (
    "slowest_compute",
    "slowest_compute_cpu",
    "stretch",
    "seed_overhead",
    "overhead_per_compute",
    "samples",
)


def seed_env(cfg: Seed) -> dict[str, str]:
    """Equal IID shards that partition the offline training split (4,000 images: 1,000 a node
    with 4 nodes), all of each shard trained on (no validation split), whole epochs."""
    return cluster_env(
        SEED_HIDDEN,
        cfg.job_timeout_s,
        FEDAVG_BATCH_SIZE=str(cfg.batch_size),
        FEDAVG_MAX_BATCHES=str(cfg.max_batches or ""),  # "": whole epochs
        SHARD_OVERLAP="0",
        NODE_CAPACITY="1000",  # every node claims the same: equal shares
        VALIDATION_SPLIT="0",
    )


def run_seed(cfg: Seed, workdir: Path) -> dict[str, Any]:
    """The seed MLP on its own probed cluster: a warm-up round, ``cfg.runs`` measured jobs
    (each after its floor), then an optional profiled job."""
    file_bytes, params = weights_file_bytes(SEED_HIDDEN)
    threads = threads_per_node(cfg.nodes)
    profiles: dict[str, Any] = {}
    with LocalCluster(home=workdir / "seed", port=free_port(), env=seed_env(cfg)) as cluster:
        server_probe, node_probe = start_probed_federation(
            cluster, workdir, "seed", cfg.nodes, threads
        )
        if cfg.warmup:
            run_job(cluster, 1, cfg.job_timeout_s)
        pids = {p.name: p.pid for p in cluster.procs}
        runs = measure_runs(cluster, cfg, pids, file_bytes, params)
        if cfg.profile and profile.py_spy() is not None:
            profiles = profile_run(cluster, cfg, workdir, "profile-seed")
        server_rows = read_jsonl(server_probe)
        node_rows = {n: read_jsonl(p) for n, p in node_probe.items()}
    results = [_seed_figures(r, analyse_run(r, server_rows, node_rows)) for r in runs]
    out = summarise(results, target_ratio=None)
    for key in SEED_KEYS:
        out[key] = across_runs([r["seed"] for r in results], key)
    ratio = out["overhead_per_compute"]["median"]
    out["target_overhead_per_compute"] = SEED_TARGET
    out["target_met"] = ratio is not None and ratio <= SEED_TARGET
    return {
        "config": {
            **asdict(cfg),
            "hidden": SEED_HIDDEN,
            "params": params,
            "weights_bytes": file_bytes,
            "threads_per_node": threads,
            "cores": cores(),
        },
        "runs": results,
        "summary": out,
        "profiles": profiles,
    }


def _seed_figures(run: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Each round's slowest reported compute (the ``seconds`` of the accepted uploads), the
    overhead beyond it and its ratio to it; the run's medians of those under ``seed``."""
    times: RoundTimes = run["times"]
    for r in base["rounds"]:
        reports = times.reports.get(r["round"], {})
        seconds = {n: x["seconds"] for n, x in reports.items() if x.get("seconds") is not None}
        slowest = max(seconds.values()) if seconds else None
        node = max(seconds, key=seconds.__getitem__) if seconds else None
        cpu = r["nodes"].get(node, {}).get("compute_cpu")
        r["slowest_compute"] = slowest
        # Its CPU seconds meanwhile: wall / CPU is how much the cores' sharing stretched it.
        r["slowest_compute_cpu"] = cpu
        r["stretch"] = slowest / cpu if slowest and cpu else None
        r["seed_overhead"] = r["cycle"] - slowest if slowest is not None else None
        r["overhead_per_compute"] = r["seed_overhead"] / slowest if slowest else None
        r["samples"] = _max(x.get("samples") for x in reports.values())
    base["seed"] = {k: summary(r[k] for r in base["rounds"])["median"] for k in SEED_KEYS}
    return base
