"""Sampling profiles with py-spy (optional: ``pip install py-spy``), attached by PID.

py-spy writes "collapsed" stacks (``frame;frame;... count``); :func:`summarise` turns them
into the few tables the report needs: where each thread spends its samples, the functions
that are on the CPU themselves (self time) and our own functions with what they call
(inclusive time).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

OUR_CODE = re.compile(r"[(/](server|node)/[a-z_]+\.py")  # py-spy shortens to the sys.path root
# Leaf frames of a thread that is waiting, not working: py-spy cannot always tell them apart
# (a worker blocked on its queue, the event loop in epoll), so they are counted as idle.
IDLE = re.compile(
    r"^(select \(selectors|EpollSelector\.select|_worker \(concurrent/futures/thread|"
    r"wait \(threading|Condition\.wait|Event\.wait|Thread\._wait_for_tstate_lock|"
    r"SimpleQueue\.get|Queue\.get \(queue)"
)


def py_spy() -> str | None:
    """The py-spy executable: next to this Python first, then on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Recording:
    """``py-spy record`` attached to a running process until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.popen = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--output",
                str(out),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--threads",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write what it sampled and exit."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _short(frame: str, line: bool = False) -> str:
    """``func (/path/server/job.py:123)`` -> ``func (server/job.py)``, ``:123`` kept if ``line``."""
    m = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame)
    if not m:
        return frame
    func, path, lineno = m.group(1), m.group(2), m.group(3)
    parts = path.split("/")
    for anchor in (
        "server",
        "node",
        "bench",
        "aiohttp",
        "torch",
        "safetensors",
        "asyncio",
        "concurrent",
        "threading",
        "hashlib",
        "json",
        "sqlite3",
        "structlog",
    ):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) :])
            break
    else:
        path = parts[-1]
    return f"{func} ({path}:{lineno})" if line and lineno else f"{func} ({path})"


def summarise(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Per-thread sample shares, top self frames, top inclusive frames of our own code.

    Shares are of the busy samples (idle leaf frames, see :data:`IDLE`, are left out).
    """
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        py_frames = [f for f in frames if not f.startswith(("thread", "process"))]
        if py_frames and IDLE.match(_short(py_frames[-1])):
            idle += count
            continue
        total += count
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        if frames[0].startswith("process") and len(frames) > 1 and frames[1].startswith("thread"):
            thread = frames[1]
        threads[_thread_name(thread)] += count
        if py_frames:
            self_time[_short(py_frames[-1], line=True)] += count
        seen = set()
        for f in py_frames:
            if OUR_CODE.search(f):
                key = _short(f)
                if key not in seen:
                    seen.add(key)
                    ours[key] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": k, "samples": v, "share": v / total if total else 0.0}
            for k, v in counter.most_common(top)
        ]

    return {
        "samples": total,
        "idle_samples": idle,
        "threads": table(threads),
        "self": table(self_time),
        "inclusive_ours": table(ours),
    }


def _thread_name(frame: str) -> str:
    """``thread (8512): MainThread`` -> ``MainThread``; worker threads share one name."""
    name = frame.split(": ", 1)[1] if ": " in frame else frame
    return re.sub(r"_\d+$", "_*", name)
