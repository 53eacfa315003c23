"""Benchmark 2: the orchestrator's peak memory during rounds of the ~10 M model, 4 vs 32 nodes.

One real ``fedavg-server`` process; virtual nodes (``vnodes.py``) download the global
weights all at once, "train" for ``compute_s`` and upload them back all at once: the worst
case for memory.
The first pack of nodes joins, runs its jobs, then a second pack joins to make the larger
count, so both counts are measured on the same server.

Peak RSS is the kernel's own high-water mark (``VmHWM``), reset through
``/proc/<pid>/clear_refs`` right before each job and read right after it; a 10 ms sampler
also records the RSS curve, so the report can say whether the peak came while nodes were
downloading or while they were uploading. **Growth** is the median peak at the larger
count minus the median peak at the smaller; the target is at most 3 x the model's bytes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.demo.local_cluster import LocalCluster, free_port
from tests.bench.common import (
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
    summary,
    wait_exit,
    weights_file_bytes,
)


@dataclass(frozen=True)
class Config:
    hidden: tuple[int, int, int] = (4096, 1536, 64)
    counts: tuple[int, ...] = (4, 32)
    rounds: int = 2
    runs: int = 3
    job_timeout_s: float = 600.0
    # Simulated training between download and upload, so the two phases do not overlap and
    # the report can say which one the peak belongs to.
    compute_s: float = 1.0


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    home = workdir / "memory"
    env = cluster_env(cfg.hidden, cfg.job_timeout_s)
    file_bytes, params = weights_file_bytes(cfg.hidden)
    per_count: list[dict[str, Any]] = []
    with LocalCluster(home=home, port=free_port(), env=env) as cluster:
        cluster.start_server()
        cluster.wait_healthy(timeout=120)
        cluster.request("POST", "/datasets/prepare-mnist", timeout=300)
        pid = cluster.server.pid
        joined = 0
        packs = []
        for step, count in enumerate(cfg.counts):
            jobs_seen = cfg.runs * (len(cfg.counts) - step) + (1 if step == 0 else 0)
            out = workdir / f"memory-pack-{step}.jsonl"
            argv = [
                sys.executable,
                "-m",
                "tests.bench.vnodes",
                "--url",
                cluster.url,
                "--count",
                str(count - joined),
                "--prefix",
                f"m{step}-",
                "--out",
                str(out),
                "--jobs",
                str(jobs_seen),
                "--compute-s",
                str(cfg.compute_s),
            ]
            packs.append((spawn(cluster, f"memory-pack-{step}", argv), out))
            joined = count
            cluster.wait_nodes(count, timeout=300)
            if step == 0:  # warm-up, not measured: first-time loads (test split, caches)
                run_job(cluster, 1, cfg.job_timeout_s)
            runs = []
            for index in range(cfg.runs):
                time.sleep(0.5)  # let the last job's buffers go
                idle = rss_bytes(pid)
                reset_peak_rss(pid)
                load = loadavg()
                with Sampler({"server": pid}) as sampler:
                    status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s)
                peak = peak_rss_bytes(pid)
                runs.append(
                    {
                        "index": index,
                        "run_id": status["run_id"],
                        "idle_rss": idle,
                        "peak_rss": peak,
                        "growth_over_idle": peak - idle,
                        "load_before": load,
                        "rounds": _round_peaks(sampler, times, [o for _, o in packs]),
                        "round_seconds": [h["seconds"] for h in status["history"]],
                    }
                )
            per_count.append(
                {
                    "nodes": count,
                    "runs": runs,
                    "peak_rss": summary(r["peak_rss"] for r in runs),
                    "idle_rss": summary(r["idle_rss"] for r in runs),
                    "growth_over_idle": summary(r["growth_over_idle"] for r in runs),
                }
            )
        for proc, _ in packs:
            wait_exit(proc, 60)
    low, high = per_count[0], per_count[-1]
    growth = high["peak_rss"]["median"] - low["peak_rss"]["median"]
    pairs = [
        h["peak_rss"] - lo["peak_rss"] for h, lo in zip(high["runs"], low["runs"], strict=True)
    ]
    return {
        "config": {**asdict(cfg), "params": params, "weights_bytes": file_bytes},
        "counts": per_count,
        "summary": {
            "weights_bytes": file_bytes,
            "growth_bytes": growth,
            "growth_per_run": summary(pairs),
            "growth_in_models": growth / file_bytes,
            # The idle RSS before a job drifts up from job to job (memory kept by the
            # allocators), so the growth of peak - idle is shown beside it.
            "growth_over_idle_bytes": high["growth_over_idle"]["median"]
            - low["growth_over_idle"]["median"],
            "per_extra_node_bytes": growth / max(1, high["nodes"] - low["nodes"]),
            "target_models": 3.0,
            "target_met": growth <= 3 * file_bytes,
        },
    }


def _round_peaks(
    sampler: Sampler, times: RoundTimes, pack_logs: list[Path]
) -> list[dict[str, Any]]:
    """Per round: peak RSS while nodes downloaded, and while they uploaded and it averaged."""
    rows = [r for log in pack_logs for r in read_jsonl(log)]
    out = []
    for r in sorted(times.closed):
        # start = round_opened(r); end = round_opened(r + 1), the next weights out (the last
        # round: its round_closed). Round r's evaluation and checkpoint run after its end,
        # while nodes download round r + 1: their memory shows in that round's downloads.
        start, end = times.round_start(r), times.round_end(r)
        mine = [
            x
            for x in rows
            if x.get("round") == r and start - 1 <= x.get("t0", x.get("t", 0)) <= end
        ]
        downloads = [x for x in mine if x["ev"] == "download"]
        uploads = [x for x in mine if x["ev"] == "upload"]
        dl_end = max((x["t1"] for x in downloads), default=start)
        up_start = min((x["t0"] for x in uploads), default=dl_end)
        out.append(
            {
                "round": r,
                "peak_rss": sampler.peak_rss("server", start, end),
                "peak_rss_downloads": sampler.peak_rss("server", start, dl_end),
                "peak_rss_uploads": sampler.peak_rss("server", up_start, end),
                "downloads_s": dl_end - start,
                "uploads_s": end - up_start,
            }
        )
    return out
