"""The ``fedavg`` command against a real orchestrator and two real nodes, as a user drives it.

One cluster serves the module (an admin token set, so every control call proves it sends
one). The installed console script runs as a subprocess, over a pipe for ``--json`` and the
tables, and under a pseudo-terminal for the live board. The stop test runs last: it leaves a
stopped job as the orchestrator's last run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from safetensors.torch import load_file

from server.demo.local_cluster import LocalCluster, free_port

pytestmark = pytest.mark.slow

FEDAVG = Path(sys.executable).parent / "fedavg"  # the console script `pip install -e .` made
TOKEN = "console-test-admin-token-0123456789"
SMALL_MLP = json.dumps({"arch": "mlp", "hidden": [32], "dropout": []})
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {
        "FEDAVG_MNIST_DOWNLOAD": "false",
        "FEDAVG_RECONNECT_MAX": "2",
        "FEDAVG_ADMIN_TOKEN": TOKEN,
    }
    with LocalCluster(tmp_path_factory.mktemp("console"), free_port(), env=env) as c:
        c.start_server()
        c.wait_healthy()
        for name in ("node-1", "node-2"):
            c.start_node(name, threads=1)
        c.wait_nodes(2)
        yield c


def command_env(cluster: LocalCluster, token: bool) -> dict[str, str]:
    env = {**os.environ, "ORCHESTRATOR_URL": cluster.url, "COLUMNS": "160"}
    env.pop("FEDAVG_ADMIN_TOKEN", None)
    return {**env, "FEDAVG_ADMIN_TOKEN": TOKEN} if token else env


def fedavg(
    cluster: LocalCluster, *args: str, token: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDAVG), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=command_env(cluster, token),
    )


def as_json(cluster: LocalCluster, *args: str) -> Any:
    result = fedavg(cluster, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def trained(cluster: LocalCluster) -> tuple[subprocess.CompletedProcess[str], str]:
    """MNIST prepared and one 2-round job followed to its end: the output and the run id."""
    prepared = fedavg(cluster, "prepare", "mnist")
    assert prepared.returncode == 0, prepared.stderr
    assert "mnist ready: 4000 train / 1000 test samples" in prepared.stdout
    result = fedavg(cluster, "train", "mnist", "--rounds", "2", "--model", SMALL_MLP)
    assert result.returncode == 0, result.stdout + result.stderr
    started = re.search(r"^job (\S+) started \(2 rounds, 2 nodes, model mlp", result.stdout, re.M)
    assert started, result.stdout
    return result, started.group(1)


def round_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["round", "nodes"])
    return [line.split() for line in lines[header + 1 :] if line.strip()[:1].isdigit()]


def test_train_follows_the_job_and_the_read_commands_show_it(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str]
) -> None:
    result, run_id = trained
    rows = round_rows(result.stdout)
    assert [r[:2] for r in rows] == [["1", "2"], ["2", "2"]]
    assert f"job {run_id} completed after round 2 of 2; final test accuracy" in result.stdout
    shown = as_json(cluster, "status")
    assert shown["status"]["run_id"] == run_id and shown["status"]["state"] == "completed"
    assert [f"{h['test_accuracy']:.4f}" for h in shown["status"]["history"]] == [r[2] for r in rows]
    assert sorted(n["name"] for n in as_json(cluster, "nodes")["nodes"]) == ["node-1", "node-2"]
    assert as_json(cluster, "runs")["runs"][0]["run_id"] == run_id
    catalog = {d["dataset_id"]: d for d in as_json(cluster, "datasets")["catalog"]}
    assert catalog["mnist"]["prepared"] is True
    assert f"{run_id}.safetensors" in {m["name"] for m in as_json(cluster, "models")["models"]}
    table = fedavg(cluster, "status")
    assert table.returncode == 0 and f"{run_id} (completed)" in table.stdout
    assert "2 of 2" in table.stdout and "node-1" in table.stdout


def test_export_writes_the_rounds_and_each_nodes_metrics(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str], tmp_path: Path
) -> None:
    _, run_id = trained
    out = tmp_path / "run.csv"
    written = fedavg(cluster, "export", run_id, "--csv", "-o", str(out))
    assert written.returncode == 0, written.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    exported = fedavg(cluster, "export", run_id, "--json")
    assert exported.returncode == 0, exported.stderr
    record = json.loads(exported.stdout)
    assert record["run"]["run_id"] == run_id and record["run"]["status"] == "completed"
    assert [(r["round"], r["scope"]) for r in rows] == [
        ("1", "global"),
        ("2", "global"),
        ("1", "node-1"),
        ("1", "node-2"),
        ("2", "node-1"),
        ("2", "node-2"),
    ]
    assert [float(r["test_accuracy"]) for r in rows[:2]] == [
        h["test_accuracy"] for h in record["rounds"]
    ]
    assert all(float(r["train_loss"]) > 0 and int(r["samples"]) > 0 for r in rows[2:])
    assert len(record["nodes"]) == 4


def test_plot_draws_a_png_of_the_size_asked(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str], tmp_path: Path
) -> None:
    _, run_id = trained
    out = tmp_path / "run.png"
    result = fedavg(cluster, "plot", run_id, str(out), "--size", "800x600")
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (800, 600)


def test_an_older_run_is_exported_and_plotted_after_a_newer_one(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str], tmp_path: Path
) -> None:
    _, first = trained
    before = as_json(cluster, "export", first)
    newer = as_json(cluster, "train", "mnist", "--rounds", "1", "--model", SMALL_MLP)
    assert newer["state"] == "completed" and newer["run_id"] != first
    older = as_json(cluster, "export", first)
    assert older["run"]["run_id"] == first and older["run"]["status"] == "completed"
    assert older["rounds"] == before["rounds"] and len(older["rounds"]) == 2
    assert older["nodes"] == before["nodes"] and len(older["nodes"]) == 4
    latest = as_json(cluster, "export")  # no RUN: the last run
    assert latest["run"]["run_id"] == newer["run_id"] and len(latest["rounds"]) == 1
    assert [h["test_accuracy"] for h in latest["rounds"]] == [
        h["test_accuracy"] for h in newer["history"]
    ]
    out = tmp_path / "older.png"
    plotted = fedavg(cluster, "plot", first, str(out), "--size", "640x480")
    assert plotted.returncode == 0 and f"run {first})" in plotted.stdout, plotted.stderr
    with Image.open(out) as image:
        assert image.size == (640, 480)
    unknown = fedavg(cluster, "export", "mnist-20200101T000000Z-0000", "--json")
    assert unknown.returncode == 4 and "no run 'mnist-20200101T000000Z-0000'" in unknown.stderr


def test_download_saves_the_model_as_listed(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str], tmp_path: Path
) -> None:
    _, run_id = trained
    name = f"{run_id}.safetensors"
    saved = as_json(cluster, "download", name, "-o", str(tmp_path))
    listed = {m["name"]: m for m in as_json(cluster, "models")["models"]}
    assert saved["path"] == str(tmp_path / name) and saved["sha256"] == listed[name]["sha256"]
    tensors = load_file(tmp_path / name)
    assert tensors and all(t.dtype.is_floating_point for t in tensors.values())


def test_refusals_exit_4_and_an_absent_orchestrator_exits_3(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str], tmp_path: Path
) -> None:
    no_token = fedavg(cluster, "stop", token=False)
    assert no_token.returncode == 4 and "FEDAVG_ADMIN_TOKEN" in no_token.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    unknown = fedavg(cluster, "train", "nosuch", "--token-file", str(token_file), token=False)
    assert unknown.returncode == 4 and "-> 404: unknown dataset 'nosuch'" in unknown.stderr
    bad = fedavg(cluster, "train", "mnist", "--partition", "classes:0")
    assert bad.returncode == 4 and "partition" in bad.stderr
    elsewhere = f"http://127.0.0.1:{free_port()}"
    gone = fedavg(cluster, "status", "--orchestrator", elsewhere)
    assert gone.returncode == 3
    assert f"cannot reach {elsewhere}" in gone.stderr and "ORCHESTRATOR_URL" in gone.stderr


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal; its exit code and what it drew, escapes removed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    drawn = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # EIO: the program has exited and closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
        code = proc.wait(timeout=30)
    return code, ANSI.sub("", drawn.decode(errors="replace"))


def test_train_on_a_terminal_draws_the_live_node_board(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str]
) -> None:
    env = {**command_env(cluster, token=True), "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    argv = [str(FEDAVG), "train", "mnist", "--rounds", "2", "--model", SMALL_MLP]
    code, screen = run_in_terminal(argv, env, timeout=240)
    assert code == 0, screen[-2000:]
    job = re.search(r"job (\S+) started", screen)
    assert job, screen[-2000:]
    # The board: its title and columns, and a row per node that reaches "uploaded".
    assert f"job {job.group(1)}  round 2/2" in screen
    assert re.search(r"node\s+┃\s+state\s+┃\s+round\s+┃\s+epoch\s+┃\s+progress", screen)
    for name in ("node-1", "node-2"):
        assert re.search(rf"│ {name}\s+│ uploaded\s+│ 2", screen), screen[-2000:]
    # The round lines, printed above the board as each round closes.
    for round_ in (1, 2):
        assert re.search(rf"\b{round_}\s+2\s+0\.\d{{4}}\s+\d+\.\d{{4}}\s+\d+\.\d{{2}}", screen)
    assert f"job {job.group(1)} completed after round 2 of 2" in screen


def test_stop_ends_a_detached_job_and_watch_exits_1(
    cluster: LocalCluster, trained: tuple[subprocess.CompletedProcess[str], str]
) -> None:
    started = as_json(cluster, "train", "mnist", "--rounds", "500", "--detach")
    job_id = started["job_id"]
    watcher = subprocess.Popen(
        [str(FEDAVG), "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(cluster, token=False),  # reading needs no token
    )
    try:
        deadline = time.monotonic() + 120
        while cluster.request("GET", "/sync/status")["round"] < 2:
            assert time.monotonic() < deadline, "the detached job never reached round 2"
            time.sleep(0.2)
        stopped = fedavg(cluster, "stop")
        assert stopped.returncode == 0 and f"job {job_id} stopped" in stopped.stdout
        out, err = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 1, out + err
    assert f"job {job_id} stopped after round" in out
    again = fedavg(cluster, "stop")
    assert again.returncode == 4 and "no job is running" in again.stderr
    assert fedavg(cluster, "watch").returncode == 1  # the last job was stopped
