"""Hostile connections against a real ``fedavg-server`` process with a small descriptor limit:
slow heads, floods of idle sockets, and a gzip bomb. All on loopback, bounded in count and
time; every socket is closed and the server stopped by PID at the end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.demo.local_cluster import LocalCluster, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit"),
]

FD_LIMIT = 256  # so the caps are 192 connections, 96 pending, 64 pending per peer
STALLED = 300  # more sockets than the process has descriptors
ATTACKER = "127.0.0.2"  # Linux answers on all of 127/8: a second peer address, same machine
HALF_A_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
BANNER = ("======== Running on", "(Press CTRL+C to quit)")
WAIT_S = 20.0


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    env = {"FEDAVG_MNIST_DOWNLOAD": "false", "FEDAVG_HEADER_TIMEOUT": "1"}
    env.update(getattr(request, "param", {}))
    cluster = LocalCluster(home=tmp_path / "home", port=free_port(), env=env)
    argv = [sys.executable, "-m", "server.cli", "--host", cluster.host, "--port", str(cluster.port)]
    cluster.spawn(
        "server", ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", *argv]
    )  # execs: same PID
    try:
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


def open_stalled(port: int, count: int, source: str) -> list[socket.socket]:
    """``count`` connections from ``source`` that each send half a request head and stall."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # refused at the door already: fine too
            sock.sendall(HALF_A_HEAD)
        sockets.append(sock)
    return sockets


def is_closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(4096) == b""  # EOF
    except TimeoutError:
        return False  # still open, nothing said
    except OSError:
        return True  # reset


def health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        body: dict[str, object] = json.loads(resp.read())
        return body


def refused(cluster: LocalCluster) -> dict[str, float]:
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = r'^fedavg_connections_refused_total\{reason="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match[1]) * 1024


def assert_log_is_small_json(cluster: LocalCluster) -> None:
    raw = cluster.server.log_path.read_bytes()
    assert len(raw) < 200_000, f"{len(raw)} bytes of log"
    for line in raw.decode().splitlines():
        if line.startswith(BANNER):
            continue
        json.loads(line)  # every other line is one JSON record, tracebacks included


def test_stalled_heads_are_capped_per_peer_and_cut_at_the_header_timeout(
    cluster: LocalCluster,
) -> None:
    stalled = open_stalled(cluster.port, STALLED, ATTACKER)
    try:
        # A fresh connection from another address is served while the attacker's are held.
        assert health(cluster.port)["status"] == "ok"
        deadline = time.monotonic() + WAIT_S
        open_ = stalled
        while open_ and time.monotonic() < deadline:
            open_ = [s for s in open_ if not is_closed_by_server(s)]
        assert open_ == [], f"{len(open_)} stalled connections still open after {WAIT_S} s"
    finally:
        for sock in stalled:
            sock.close()
    counts = refused(cluster)
    # Every stalled socket was either closed at the door (64 of one peer's were pending
    # already) or let in and cut when its head had not come within the second.
    assert sum(counts.values()) == STALLED, counts
    assert counts.get("pending_per_peer", 0) > 0 and counts.get("head_timeout", 0) > 0, counts
    assert health(cluster.port)["status"] == "ok"
    assert cluster.server.alive()
    assert_log_is_small_json(cluster)


@pytest.mark.parametrize("cluster", [{"FEDAVG_HEADER_TIMEOUT": "5"}], indirect=True)
def test_a_flood_of_kept_alive_connections_stays_below_the_descriptor_limit(
    cluster: LocalCluster,
) -> None:
    flood: list[socket.socket] = []
    try:
        # Each completes a request, so it is no longer pending, and then idles, kept alive.
        for i in range(STALLED):
            sock = socket.socket()
            sock.settimeout(5)
            sock.bind((f"127.0.1.{1 + i % 200}", 0))
            sock.connect(("127.0.0.1", cluster.port))
            flood.append(sock)
            with contextlib.suppress(OSError):  # past the cap: closed at the door
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                sock.recv(4096)
        held = len(os.listdir(f"/proc/{cluster.server.pid}/fd"))
        assert held < FD_LIMIT, held
        # Kept-alive connections idle for the header timeout are closed, then all is well.
        deadline = time.monotonic() + WAIT_S
        served = False
        while not served and time.monotonic() < deadline:
            try:
                served = health(cluster.port)["status"] == "ok"
            except OSError:
                time.sleep(0.2)
        assert served, f"/health did not answer within {WAIT_S} s of the flood"
    finally:
        for sock in flood:
            sock.close()
    assert refused(cluster).get("total", 0) >= STALLED - 192, refused(cluster)
    assert cluster.server.alive()
    assert_log_is_small_json(cluster)


def test_a_gzip_bomb_upload_is_refused_unread(cluster: LocalCluster) -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    zeros = bytes(1 << 20)
    bomb = b"".join(deflate.compress(zeros) for _ in range(512)) + deflate.flush()
    assert len(bomb) < 1 << 20  # 512 MiB of zeros in well under 1 MiB
    before = rss_bytes(cluster.server.pid)
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as sock:
        head = (
            "POST /sync/weights?job=x&round=1&samples=1 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{cluster.port}\r\nAuthorization: Bearer whatever\r\n"
            "Content-Type: application/octet-stream\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(bomb)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        with contextlib.suppress(OSError):  # answered and closed before it was all sent
            sock.sendall(bomb)
        answer = sock.recv(65536)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 415 Unsupported Media Type", answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "unsupported_media_type"
    assert health(cluster.port)["status"] == "ok"
    assert rss_bytes(cluster.server.pid) - before < 64 << 20  # never inflated
