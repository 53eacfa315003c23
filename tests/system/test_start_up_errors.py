"""The real programs refuse a bad start in one line that names what to change, exit 2.

Each test runs the console script's module as a process (``python -m server.cli`` is what
``fedavg-server`` calls) with one bad variable, flag or busy port, and reads what it printed.
A node that cannot reach its orchestrator keeps retrying: it is read until it says why, in
words, and then stopped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.shared.data_files import write_image_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXIT_BAD_SETTING = 2


def run(
    module: str, *args: str, env: dict[str, str], home: Path
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FEDAVG_", "SHOWCASE_"))},
        "FEDAVG_HOME": str(home),
        "FEDAVG_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str], program: str) -> str:
    """The one line the program ended with, after checking it exited 2 with no traceback."""
    assert result.returncode == EXIT_BAD_SETTING, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr  # the structlog JSON lines aside
    assert lines[0].startswith(f"{program}: ")
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by a real listening socket for the whole test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EPOCH_SYNC_TIMEOUT", "abc"),
        ("FEDAVG_PORT", "abc"),
        ("FEDAVG_SEED", "x"),
        ("MODEL_HIDDEN_1", "0"),
        ("FEDAVG_LR", "-1"),
    ],
)
def test_the_server_names_a_bad_variable(tmp_path: Path, variable: str, value: str) -> None:
    line = refusal(run("server.cli", env={variable: value}, home=tmp_path), "fedavg-server")
    assert variable in line
    assert "invalid literal" not in line and "could not convert" not in line
    if variable == "FEDAVG_LR":
        assert "FEDAVG_BATCH_SIZE" not in line  # only the one that is wrong


def test_the_server_on_a_busy_port_says_so_and_names_the_flag(
    tmp_path: Path, busy_port: int
) -> None:
    result = run("server.cli", "--port", str(busy_port), env={}, home=tmp_path)
    line = refusal(result, "fedavg-server")
    assert f"port {busy_port} is in use" in line
    assert "--port" in line and "FEDAVG_PORT" in line


@pytest.mark.parametrize(
    ("variable", "value"), [("FEDAVG_TORCH_THREADS", "x"), ("VALIDATION_SPLIT", "abc")]
)
def test_the_node_names_a_bad_variable(tmp_path: Path, variable: str, value: str) -> None:
    line = refusal(run("node.cli", env={variable: value}, home=tmp_path), "fedavg-node")
    assert f"{variable}={value!r}" in line


def test_a_node_with_a_missing_ca_file_stops_at_start_up_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    for args, env in (
        (("--ca-cert", str(missing)), {}),
        ((), {"FEDAVG_CA_CERT": str(missing)}),
    ):
        result = run("node.cli", *args, env=env, home=tmp_path)
        line = refusal(result, "fedavg-node")
        assert str(missing) in line and "FEDAVG_CA_CERT" in line and "--ca-cert" in line


def test_a_node_that_cannot_connect_says_why_in_words(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FEDAVG_")},
        "FEDAVG_LOG_FORMAT": "json",
        "FEDAVG_RECONNECT_MAX": "1",
        "PYTHONPATH": str(ROOT),
    }
    url = f"http://127.0.0.1:{closed}"
    home = tmp_path / "home"  # by flag: its cache dir, with the node's identity, is under it
    argv = [sys.executable, "-m", "node.cli", "--orchestrator", url, "--capacity", "100"]
    argv += ["--home", str(home)]
    lines: list[str] = []
    failures: list[dict[str, object]] = []
    with subprocess.Popen(
        argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as node:
        assert node.stderr is not None
        try:
            while len(failures) < 2:  # two retries: each gets the same one line
                line = node.stderr.readline()
                assert line, "".join(lines)  # the node exited
                lines.append(line)
                if line.startswith("{") and json.loads(line)["event"] == "orchestrator_unreachable":
                    failures.append(json.loads(line))
        finally:
            node.terminate()
            node.wait(timeout=30)
    for failure in failures:
        assert failure["url"] == url
        assert failure["reason"] == f"connection refused at 127.0.0.1:{closed}"
        assert isinstance(failure["retry_in_s"], float) and failure["retry_in_s"] > 0
    text = "".join(lines)
    assert "ClientConnectorError" not in text and "Traceback" not in text
    assert (home / "node-cache" / "identity.json").is_file()


def test_the_showcase_names_a_bad_variable_and_a_busy_port(tmp_path: Path, busy_port: int) -> None:
    line = refusal(
        run("showcase.cli", env={"SHOWCASE_PORT": "abc"}, home=tmp_path), "fedavg-showcase"
    )
    assert "SHOWCASE_PORT" in line and "'abc'" in line
    line = refusal(
        run("showcase.cli", "--port", str(busy_port), env={}, home=tmp_path), "fedavg-showcase"
    )
    assert f"port {busy_port} is in use" in line and "--port" in line


def test_a_node_with_bad_own_data_stops_at_start_up_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pets"
    line = refusal(
        run("node.cli", "--data", f"pets={missing}", env={}, home=tmp_path), "fedavg-node"
    )
    assert "NODE_DATA/--data" in line and "'pets'" in line and str(missing) in line
    line = refusal(run("node.cli", env={"NODE_DATA": "pets"}, home=tmp_path), "fedavg-node")
    assert "NODE_DATA: 'pets' is not NAME=PATH" in line


def test_a_node_reads_and_caches_its_own_data_before_it_joins(tmp_path: Path) -> None:
    """What it logs is what it may announce: counts, schema, fingerprint, no sample."""
    folder = write_image_folder(tmp_path / "pets", {"cat": 10, "dog": 5}, size=(8, 8))
    with socket.socket() as probe:  # no orchestrator: the data is read before joining
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FEDAVG_")},
        "FEDAVG_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "node.cli", "--orchestrator", f"http://127.0.0.1:{closed}"]
    argv += ["--capacity", "100", "--home", str(tmp_path / "home"), "--data", f"pets={folder}"]
    ready = None
    with subprocess.Popen(
        argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as node:
        assert node.stderr is not None
        try:
            for line in node.stderr:
                if line.startswith("{") and json.loads(line)["event"] == "local_data_ready":
                    ready = json.loads(line)
                    break
        finally:
            node.terminate()
            node.wait(timeout=30)
    assert ready is not None
    assert ready["name"] == "pets" and ready["train_samples"] == 12 and ready["test_samples"] == 3
    assert ready["input_shape"] == [3, 8, 8]
    assert ready["class_names"] == ["cat", "dog"]
    assert len(ready["fingerprint"]) == 64 and ready["label_counts"] is None
    assert len(list((tmp_path / "home" / "node-cache" / "local-data").iterdir())) == 1
