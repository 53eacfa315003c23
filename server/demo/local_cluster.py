"""A whole federation as local processes: one ``fedavg-server`` and N ``fedavg-node``.

Used by ``fedavg-demo`` and by the system tests, so both exercise the real console programs
over real sockets. Every process is tracked by PID and stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO


class ClusterError(RuntimeError):
    """A local process failed to start or answer in time; the message says where to look."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: BinaryIO
    expect_exit: bool = False  # set when we stop it, or a test expects it to die

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """Start, watch and stop the processes of a one-machine federation."""

    home: Path
    port: int
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None  # set when the server speaks TLS: https, trusting this CA
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def _spawn(
        self, name: str, module: str, args: list[str], env: dict[str, str] | None = None
    ) -> Proc:
        return self.spawn(name, [sys.executable, "-m", module, *args], env)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` as one of the cluster's processes: stopped with it, its output in
        ``logs/<name>.log``, with the cluster's environment plus ``env``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        env = {
            **os.environ,
            "FEDAVG_HOME": str(self.home),
            "FEDAVG_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **(env or {}),
        }
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        proc = Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def start_server(self, *extra: str, env: dict[str, str] | None = None) -> Proc:
        """Start (or, after it died, restart) the orchestrator on the same home and port."""
        args = ["--host", self.host, "--port", str(self.port), *extra]
        return self._spawn("server", "server.cli", args, env)

    @property
    def server(self) -> Proc:
        """The most recently started orchestrator process."""
        return [p for p in self.procs if p.name == "server"][-1]

    def start_node(
        self, name: str, *extra: str, threads: int | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start a node whose id is its name (so a restart is the same node); flags in
        ``extra`` come last and win."""
        args = ["--orchestrator", self.url, "--name", name, "--node-id", name]
        if threads is not None:
            args += ["--threads", str(threads)]
        return self._spawn(name, "node.cli", [*args, *extra], env)

    def request(self, method: str, path: str, timeout: float = 30.0, *, body: Any = None) -> Any:
        """The JSON answer to ``method path`` (with ``body`` sent as JSON when given)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        headers = (
            {"Authorization": f"Bearer {self.env['FEDAVG_ADMIN_TOKEN']}"}
            if "FEDAVG_ADMIN_TOKEN" in self.env
            else {}
        )
        for key, value in headers.items():
            req.add_header(key, value)
        try:
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise ClusterError(f"{method} {path} -> {exc.code}: {body}") from exc

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self._wait(self._healthy, timeout, f"the orchestrator on {self.url}", self.server)

    def _healthy(self) -> bool:
        try:
            return bool(self.request("GET", "/health", timeout=2.0)["status"] == "ok")
        except (OSError, ClusterError):
            return False

    def wait_nodes(self, count: int, timeout: float = 120.0) -> None:
        def enough() -> bool:
            nodes = self.request("GET", "/nodes")["nodes"]
            return sum(1 for n in nodes if n["connected"]) >= count

        self._wait(enough, timeout, f"{count} connected nodes", None)

    def wait_job(self, timeout: float) -> dict[str, Any]:
        """Poll /sync/status until the job is no longer running; returns the last status."""
        status: dict[str, Any] = {}

        def finished() -> bool:
            nonlocal status
            status = self.request("GET", "/sync/status")
            return status["state"] not in ("running", "starting")

        self._wait(finished, timeout, "the job to finish", None, interval=0.5)
        return status

    def _wait(
        self, ready: Any, timeout: float, what: str, proc: Proc | None, interval: float = 0.2
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for p in [proc] if proc is not None else self.procs:
                if not p.alive() and not p.expect_exit:
                    raise ClusterError(
                        f"{p.name} exited with {p.popen.returncode} while waiting for {what}; "
                        f"its log ({p.log_path}) ends with:\n{p.log_tail()}"
                    )
            time.sleep(interval)
        raise ClusterError(
            f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.log_dir}"
        )

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60.0) -> None:
        """Send ``sig`` to the live process ``name`` and wait for it to exit: a node that
        shuts down cleanly on SIGTERM can take many seconds on a loaded 2-core machine."""
        proc = next(p for p in self.procs if p.name == name and p.alive())
        proc.expect_exit = True
        os.kill(proc.pid, sig)
        proc.popen.wait(timeout=timeout)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process we started (nodes first), then SIGKILL what remains."""
        for proc in sorted(self.procs, key=lambda p: p.name == "server"):
            proc.expect_exit = True
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
            proc.log_file.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
