"""A federation across "machines": the orchestrator and two nodes in their own network namespaces.

Each machine is a Linux network namespace with its own interface and address, wired to a
switch (a bridge in a fifth namespace), so the nodes reach the orchestrator over a real
network path by its address, as on a LAN, and never over loopback:

    fedavg-<pid>-srv  10.233.0.1   fedavg-server --host 10.233.0.1 (tokens set)
    fedavg-<pid>-n1   10.233.0.2   fedavg-node --orchestrator http://10.233.0.1:11999
    fedavg-<pid>-n2   10.233.0.3   fedavg-node ...
    fedavg-<pid>-adm  10.233.0.9   the operator: curl-like calls (prepare, train, status)
    fedavg-<pid>-lan  bridge br0   the switch

10.233.0.0/24 exists only inside these namespaces: the veth pairs are created directly
inside them (nothing appears in the host's namespace), no route leads out, and deleting
the namespaces deletes every link. Needs root and iproute2's `ip netns`; skipped, with the
reason, otherwise. Every process is started by this test and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SUBNET = "10.233.0"
ADDRESSES = {"srv": 1, "n1": 2, "n2": 3, "adm": 9}
PORT = 11999
SERVER_URL = f"http://{SUBNET}.{ADDRESSES['srv']}:{PORT}"
EPOCHS = 2
START_TIMEOUT_S = 90.0  # imports torch, opens the SQLite store
JOIN_TIMEOUT_S = 120.0  # each node imports torch and benchmarks itself first
TRAIN_TIMEOUT_S = 240.0
# aiohttp's start-up lines ("======== Running on ...", "(Press CTRL+C to quit)"), printed
# by fedavg-server for tools that wait for it; everything else must be a JSON line.
AIOHTTP_BANNER = ("======== Running on", "(Press CTRL+C to quit)")
BIN = Path(sys.executable).parent  # the venv's console scripts sit next to its python

# One HTTP call, made from inside a namespace: the test's own process stays in the host's.
HTTP_CLIENT = r"""
import json, sys, urllib.error, urllib.request
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method)  # a POST: Content-Length 0, no form type
if token:
    req.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[4])) as resp:
        status, body = resp.status, resp.read()
except urllib.error.HTTPError as err:
    status, body = err.code, err.read()
except OSError as err:
    status, body = 0, repr(err).encode()
print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))
"""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _skip_unless_netns_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creating network namespaces (ip netns add) is privileged")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` (Debian: apt-get install iproute2)")
    probe = f"fedavg-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        pytest.skip(
            f"cannot create a network namespace here (a container without CAP_SYS_ADMIN?): {exc}"
        )
    _ip("netns", "del", probe)


@dataclass
class Lan:
    """Namespaces on one bridge; every one created is deleted by close()."""

    prefix: str
    created: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def build(self) -> None:
        switch = self.ns("lan")
        self._add(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for host, last_octet in ADDRESSES.items():
            ns = self.ns(host)
            self._add(ns)
            port = f"p-{host}"
            # Both ends are born inside their namespaces: the host's never sees them.
            pair = ("eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", switch)
            _ip("link", "add", *pair)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{last_octet}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.created.append(ns)

    def close(self) -> list[str]:
        problems = []
        for ns in reversed(self.created):
            # Anything still running in our namespace was started by this test: by PID.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                problems.append(f"process {pid} was still running in {ns}")
            try:
                _ip("netns", "del", ns)
            except RuntimeError as exc:
                problems.append(str(exc))
        self.created.clear()
        return problems


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (pid {self.popen.pid}, rc {self.popen.poll()}) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The host's environment minus anything that would configure fedavg, plus `extra`."""
    drop = ("FEDAVG_", "NODE_", "ORCHESTRATOR_URL", "WANDB_", "SHOWCASE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class Federation:
    lan: Lan
    tmp: Path
    admin_token: str
    node_token: str
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, host: str, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            # `ip netns exec` enters the namespace and execs the program: same PID.
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.lan.ns(host), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(env),
                cwd=self.tmp,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def http(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        """A call from the operator's machine (the adm namespace) to the orchestrator."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.lan.ns("adm"), sys.executable, "-I", "-S", "-c",
             HTTP_CLIENT, method, SERVER_URL + path, token or "", "10"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"HTTP client failed: {result.stderr}")
        reply = json.loads(result.stdout)
        try:
            return reply["status"], json.loads(reply["body"])
        except json.JSONDecodeError:
            return reply["status"], reply["body"]

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    def wait_for(self, what: str, timeout_s: float, check: Callable[[], Any]) -> Any:
        """Poll check() until it returns something truthy; fail with every log if it never does."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.popen.poll() is not None:
                    pytest.fail(f"{proc.name} exited while waiting for {what}\n{self.logs()}")
            last = check()
            if last:
                return last
            time.sleep(1.0)
        pytest.fail(
            f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})\n{self.logs()}"
        )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    _skip_unless_netns_possible()
    for script in ("fedavg-server", "fedavg-node"):
        if not (BIN / script).exists():
            pytest.fail(f"{BIN / script} is missing: install the package (pip install -e .)")
    lan = Lan(prefix=f"fedavg-{os.getpid()}")
    fed = Federation(lan, tmp_path, secrets.token_urlsafe(16), secrets.token_urlsafe(16))
    problems: list[str] = []
    try:
        lan.build()
        yield fed
    finally:
        for proc in reversed(fed.procs):
            proc.stop()
        problems = lan.close()
    assert not problems, problems


def test_without_root_it_skips_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        _skip_unless_netns_possible()


def test_without_ip_it_skips_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(pytest.skip.Exception, match="iproute2"):
        _skip_unless_netns_possible()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_federation_across_three_hosts(federation: Federation) -> None:
    fed = federation
    tokens = {"FEDAVG_ADMIN_TOKEN": fed.admin_token, "FEDAVG_NODE_TOKEN": fed.node_token}
    server_addr = f"{SUBNET}.{ADDRESSES['srv']}"
    fed.spawn(
        "srv",
        "server",
        [str(BIN / "fedavg-server"), "--host", server_addr, "--port", str(PORT),
         "--home", str(fed.tmp / "srv-home")],
        {**tokens, "FEDAVG_MNIST_DOWNLOAD": "false", "FEDAVG_LOG_FORMAT": "json",
         "EPOCH_SYNC_TIMEOUT": "60"},
    )  # fmt: skip
    fed.wait_for(
        "the orchestrator's /health", START_TIMEOUT_S, lambda: fed.http("GET", "/health")[0] == 200
    )

    for host in ("n1", "n2"):
        fed.spawn(
            host,
            f"node-{host}",
            [str(BIN / "fedavg-node"), "--orchestrator", SERVER_URL, "--name", host,
             "--device", "cpu", "--threads", "1"],
            {"FEDAVG_NODE_TOKEN": fed.node_token, "FEDAVG_HOME": str(fed.tmp / f"{host}-home"),
             "FEDAVG_LOG_FORMAT": "json"},
        )  # fmt: skip

    def joined() -> list[Any] | None:
        status, body = fed.http("GET", "/nodes")
        nodes = body.get("nodes", []) if status == 200 and isinstance(body, dict) else []
        names = {n.get("name") for n in nodes if isinstance(n, dict)}
        return nodes if {"n1", "n2"} <= names else None

    nodes = fed.wait_for("both nodes to join over the network", JOIN_TIMEOUT_S, joined)
    assert len(nodes) == 2, nodes

    # The control endpoints are reachable from another machine, and only with the token.
    status, body = fed.http("POST", "/datasets/prepare-mnist")
    assert status == 401, (status, body)
    status, body = fed.http("POST", "/datasets/prepare-mnist", fed.admin_token)
    assert 200 <= status < 300, (status, body, fed.logs())

    status, body = fed.http("POST", f"/train/mnist?epochs={EPOCHS}", fed.admin_token)
    assert status == 202, (status, body, fed.logs())
    job_id = body["job_id"]

    def finished() -> dict[str, Any] | None:
        status, body = fed.http("GET", "/sync/status")
        if status != 200 or not isinstance(body, dict):
            return None
        if body.get("state") == "failed":
            pytest.fail(f"the job failed: {body}\n{fed.logs()}")
        return body if body.get("state") == "completed" else None

    final = fed.wait_for(f"job {job_id} to complete", TRAIN_TIMEOUT_S, finished)
    assert final["round"] == final["rounds"] == EPOCHS, final

    status, body = fed.http("GET", "/models")
    assert status == 200 and body["models"], (status, body)

    # What the journal gets under systemd (FEDAVG_LOG_FORMAT=json): one JSON object a line.
    for proc in fed.procs:
        for line in proc.log.read_text().splitlines():
            if line.startswith(AIOHTTP_BANNER) or not line.strip():
                continue
            assert isinstance(json.loads(line), dict), (proc.name, line)
