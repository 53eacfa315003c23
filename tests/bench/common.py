"""What every benchmark shares: statistics, the machine, process gauges, spawning, event logs.

Timestamps are ``time.time()`` everywhere (server events, probes, virtual nodes): every
process runs on this one machine, so one wall clock orders them all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.demo.local_cluster import LocalCluster, Proc

if TYPE_CHECKING:
    from node.shared.model import ModelSpec

REPO = Path(__file__).resolve().parents[2]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to; the message says why."""


# -- statistics -------------------------------------------------------------------------------


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and count of the values that exist (None and NaN are skipped)."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), or None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Distribution of many samples (nodes x rounds): p50, p95, max, count."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
        "n": len(values),
    }


def trained_samples(samples: int, batch_size: int, max_batches: int | None) -> int:
    """Samples one epoch over ``samples`` trains on when it stops after ``max_batches``
    batches (``FEDAVG_MAX_BATCHES``; None: the whole epoch), as ``node.trainer`` does."""
    return samples if max_batches is None else min(samples, max_batches * batch_size)


def across_runs(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median/min/max over runs of one per-run figure."""
    return summary(r.get(key) for r in runs)


# -- the machine ------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    import aiohttp
    import torch

    return {
        "cpu": cpu,
        "cores": cores(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "aiohttp": aiohttp.__version__,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty_files": len(_git("status", "--porcelain").splitlines()),
    }


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip()
    except OSError:
        return ""


# -- process gauges ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the peak resident set since start or since :func:`reset_peak_rss`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / TICKS, total / TICKS


@dataclass
class Sampler:
    """Samples RSS and CPU time of some processes every ``interval`` s in a thread."""

    pids: dict[str, int]
    interval: float = 0.01
    samples: list[tuple[float, str, int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.samples.append((now, name, rss_bytes(pid), cpu_seconds(pid)))
            self._stop.wait(self.interval)

    def peak_rss(self, name: str, t0: float = 0.0, t1: float = math.inf) -> int | None:
        values = [s[2] for s in self.samples if s[1] == name and t0 <= s[0] <= t1]
        return max(values) if values else None

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        """CPU seconds used by ``name`` between two wall times (nearest samples)."""
        rows = [s for s in self.samples if s[1] == name]
        before = [s for s in rows if s[0] <= t0]
        after = [s for s in rows if s[0] >= t1]
        if not before or not after:
            return None
        return after[0][3] - before[-1][3]


# -- processes --------------------------------------------------------------------------------


def spawn(
    cluster: LocalCluster,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
) -> Proc:
    """``LocalCluster.spawn`` with this checkout on ``PYTHONPATH``: the benchmarks also start
    the programs wrapped in probes, the virtual-node packs and py-spy."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return cluster.spawn(name, argv, {"PYTHONPATH": path, **(env or {})})


def start_probed_server(
    cluster: LocalCluster, probe_file: Path, env: dict[str, str] | None = None
) -> Proc:
    """``fedavg-server`` with timing probes (see ``probes.py``) on the cluster's port;
    ``env`` is added to the cluster's (e.g. ``FEDAVG_WIRE_DTYPE``, read at start)."""
    argv = [sys.executable, "-m", "tests.bench.probes", "server"]
    argv += ["--host", cluster.host, "--port", str(cluster.port)]
    return spawn(cluster, "server", argv, {**(env or {}), "FEDAVG_BENCH_PROBE": str(probe_file)})


def start_probed_node(cluster: LocalCluster, name: str, probe_file: Path, threads: int) -> Proc:
    """``fedavg-node`` with timing probes; the same program, arguments and environment."""
    argv = [sys.executable, "-m", "tests.bench.probes", "node", "--orchestrator", cluster.url]
    argv += ["--name", name, "--node-id", name, "--threads", str(threads)]
    return spawn(cluster, name, argv, {"FEDAVG_BENCH_PROBE": str(probe_file)})


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def threads_per_node(nodes: int) -> int:
    """The torch threads each of ``nodes`` local node processes gets: the cores shared out,
    at least one (what ``fedavg-demo`` gives its nodes too)."""
    return max(1, cores() // nodes)


def start_probed_federation(
    cluster: LocalCluster, workdir: Path, prefix: str, nodes: int, threads: int
) -> tuple[Path, dict[str, Path]]:
    """A probed server with MNIST prepared, then ``nodes`` probed nodes (``node-1``...) of
    ``threads`` torch threads each, all connected; returns the server's probe file and each
    node's (``<prefix>-server.jsonl``, ``<prefix>-node-i.jsonl`` in ``workdir``)."""
    server_probe = workdir / f"{prefix}-server.jsonl"
    start_probed_server(cluster, server_probe)
    cluster.wait_healthy(timeout=120)
    cluster.request("POST", "/datasets/prepare-mnist", timeout=300)
    names = [f"node-{i}" for i in range(1, nodes + 1)]
    node_probes = {n: workdir / f"{prefix}-{n}.jsonl" for n in names}
    for n in names:
        start_probed_node(cluster, n, node_probes[n], threads)
    cluster.wait_nodes(nodes, timeout=300)
    return server_probe, node_probes


def wait_exit(proc: Proc, timeout: float) -> int:
    try:
        code = proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(
            f"{proc.name} still running after {timeout:.0f} s; its log ({proc.log_path}) ends:\n"
            f"{proc.log_tail()}"
        ) from exc
    proc.expect_exit = True
    return code


# -- records ----------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
            rows.append(json.loads(line))
    return rows


def server_events(home: Path, run_id: str) -> list[dict[str, Any]]:
    """The job's timeline from the server's SQLite ``events`` table (server timestamps)."""
    db = sqlite3.connect(f"file:{home / 'fedavg.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT ts, kind, node_id, data FROM events WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
    finally:
        db.close()
    return [{"ts": ts, "kind": k, "node_id": n, "data": json.loads(d)} for ts, k, n, d in rows]


@dataclass(frozen=True)
class RoundTimes:
    """Server timestamps of one job's rounds: opened, uploads accepted, closed.

    The server opens round r + 1 (``round_opened``) and pushes ``weights_ready`` as soon as
    round r's average is in the next weights file; only then does it evaluate round r, write
    its checkpoint and publish ``round_closed``(r). So ``round_opened``(r + 1) comes before
    ``round_closed``(r), and a round's work ends at the next round's opening. The last round
    has no next round: it is evaluated and written before the job finishes, and it ends at
    its own ``round_closed``.
    """

    started: float
    opened: dict[int, float]
    closed: dict[int, float]
    accepted: dict[int, dict[str, float]]
    history: dict[int, dict[str, Any]]
    done: float | None
    done_kind: str | None
    # What each accepted upload reported, per round and node: its sample count and metrics
    # (``seconds`` is the node's ``train_locally`` wall time).
    reports: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: list[dict[str, Any]]) -> RoundTimes:
        started = next((e["ts"] for e in events if e["kind"] == "job_started"), math.nan)
        opened: dict[int, float] = {}
        closed: dict[int, float] = {}
        history: dict[int, dict[str, Any]] = {}
        accepted: dict[int, dict[str, float]] = {}
        reports: dict[int, dict[str, dict[str, Any]]] = {}
        done = done_kind = None
        for e in events:
            data = e["data"]
            if e["kind"] == "round_opened":
                opened[data["round"]] = e["ts"]
            elif e["kind"] == "round_closed":
                closed[data["round"]] = e["ts"]
                history[data["round"]] = data
            elif e["kind"] == "upload_accepted":
                accepted.setdefault(data["round"], {})[e["node_id"]] = e["ts"]
                reports.setdefault(data["round"], {})[e["node_id"]] = data
            elif e["kind"] in ("job_done", "job_failed", "job_stopped"):
                done, done_kind = e["ts"], e["kind"]
        return cls(started, opened, closed, accepted, history, done, done_kind, reports)

    def round_start(self, r: int) -> float:
        """When round r's work was announced: the server's ``round_opened``(r). Round 1 opens
        right before the ``train`` frames go out, round r > 1 right before ``weights_ready``
        (r - 1) is pushed."""
        return self.opened[r]

    def round_end(self, r: int) -> float:
        """When round r's work was done: ``round_opened``(r + 1), the next global weights out;
        for the last round (no next round) its ``round_closed``, after its evaluation and
        checkpoint."""
        return self.opened[r + 1] if r + 1 in self.opened else self.closed[r]

    @property
    def end(self) -> float:
        """The job's end: ``job_done`` (or failed/stopped), else the last round's end."""
        return self.done or max(self.closed.values())


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {"t0": time.time()}
    try:
        yield box
    finally:
        box["t1"] = time.time()
        box["s"] = box["t1"] - box["t0"]


def mib(n: float | None) -> float | None:
    return None if n is None else n / 2**20


def run_job(
    cluster: LocalCluster, rounds: int, timeout: float, body: dict[str, Any] | None = None
) -> tuple[dict[str, Any], RoundTimes]:
    """Start a job over the connected nodes (``body``: the request's JSON body, such as its
    model), wait for its end, return its status and times."""
    job = cluster.request("POST", f"/train/mnist?epochs={rounds}", timeout=120, body=body)
    status = cluster.wait_job(timeout=timeout)
    if status.get("run_id") != job["job_id"]:
        raise BenchError(f"expected job {job['job_id']}, the server reports {status.get('run_id')}")
    times = RoundTimes.from_events(server_events(cluster.home, job["job_id"]))
    if status["state"] != "completed":
        raise BenchError(f"job {job['job_id']} ended {status['state']}: {status.get('error')}")
    return status, times


def cluster_env(hidden: tuple[int, ...], deadline_s: float, **extra: str) -> dict[str, str]:
    """What every benchmark's cluster runs with: the model's widths, the offline dataset
    (never a download), and a round deadline."""
    return {
        **{f"MODEL_HIDDEN_{i + 1}": str(width) for i, width in enumerate(hidden)},
        "FEDAVG_MNIST_DOWNLOAD": "false",
        "EPOCH_SYNC_TIMEOUT": str(deadline_s),
        **extra,
    }


def weights_file_bytes(hidden: tuple[int, ...], wire_dtype: str = "float32") -> tuple[int, int]:
    """(size of a weights file, parameter count) of the MLP with these hidden widths (the
    server's MLP for ``MODEL_HIDDEN_*``), its floating tensors in ``wire_dtype``."""
    from node.shared.model import ModelSpec

    spec = ModelSpec(hidden=hidden, dropout=(0.3, 0.2)[: len(hidden)])
    return spec_weights_bytes(spec, wire_dtype)


def spec_weights_bytes(spec: ModelSpec, wire_dtype: str = "float32") -> tuple[int, int]:
    """(size of a weights file, parameter count) of any model spec, its floating tensors in
    ``wire_dtype`` (what the server publishes with ``--wire-dtype``)."""
    from node.shared.model import init_state, parameter_count
    from node.shared.weights import WIRE_DTYPES, WeightsMeta, encode_weights

    dtype = WIRE_DTYPES[wire_dtype]
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in init_state(spec, 0).items()}
    data = encode_weights(state, WeightsMeta(spec=spec, round=1, job_id="x" * 28))
    return len(data), parameter_count(spec)


def measure_floor(payload_bytes: int, params: int, nodes: int, repeats: int) -> dict[str, Any]:
    """The floor (see floor.py), measured right now in this (otherwise idle) process."""
    from tests.bench.floor import measure

    result = measure(payload_bytes, params, nodes, repeats)
    result["load"] = loadavg()
    return result
