"""The images of deploy/docker built and run for real, with buildah and no Docker daemon.

deploy/docker/build-and-run.sh builds the Debian base (cached by its release date), then the
server, node and showcase images from the Dockerfiles users build. The server and two nodes
then run from their images (each image's own entrypoint, user and environment; the host's
network), train a 2-round job, and the showcase, from its image, serves the saved model.
Afterwards only the cached base is left: every image, working container and mount is gone.

Needs root, buildah, podman and debootstrap (./dev test installs them), the network to
Debian's mirror and PyPI, and a kernel that lets buildah run a program in a chroot: skipped,
with the reason, otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_support import DEPLOY
from safetensors import safe_open

SCRIPT = DEPLOY / "docker" / "build-and-run.sh"
CACHE = Path(os.environ.get("FEDAVG_CONTAINER_CACHE", Path.home() / ".cache/fedavg-containers"))
STORE = ["--root", f"{CACHE}/storage", "--runroot", f"{CACHE}/run", "--storage-driver", "overlay"]
TAG = "local"
IMAGE_USER_UID = 10001  # the images' fedavg user: the volumes it writes belong to it
EPOCHS = 2
BUILD_TIMEOUT_S = 900
WAIT_S = 180.0
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *STORE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def refusal_of_chroot_run() -> str | None:
    """Why buildah cannot run a program with chroot isolation here, or None when it can.

    The exact operation the build needs (buildah run --isolation chroot), on a scratch
    container holding only the host's `true` and the libraries it links.
    """
    ctr = buildah("from", "--name", f"fedavg-probe-{os.getpid()}", "scratch")
    if ctr.returncode != 0:
        return f"buildah from scratch failed: {ctr.stderr.strip()}"
    name = ctr.stdout.strip()
    try:
        true = Path(shutil.which("true") or "/bin/true").resolve()
        ldd = subprocess.run(["ldd", str(true)], capture_output=True, text=True, check=False)
        for path in [str(true), *(w for w in ldd.stdout.split() if w.startswith("/"))]:
            copied = buildah("copy", name, path, path)
            if copied.returncode != 0:
                return f"buildah copy failed: {copied.stderr.strip()}"
        ran = buildah("run", "--isolation", "chroot", name, "--", str(true))
        if ran.returncode != 0:
            return f"buildah run --isolation chroot failed: {ran.stderr.strip()[-500:]}"
        return None
    finally:
        buildah("rm", name)


def skip_unless_chroot_builds() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: buildah's chroot isolation and debootstrap are privileged")
    missing = [t for t in ("buildah", "podman", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (./dev test installs them with apt-get)")
    refusal = refusal_of_chroot_run()
    if refusal:
        pytest.skip(f"this kernel refuses chroot builds: {refusal}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with OPENER.open(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    except OSError:
        return 0, None
    text = body.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@dataclass
class Container:
    """One `build-and-run.sh run IMAGE`: a process group this test started and stops."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (rc {self.popen.poll()}) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> list[str]:
        """Stop it by its PID; returns what of its session was still running afterwards."""
        if self.popen.poll() is None:
            # The script passes it to its program, then removes its working container.
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (left := session_members(self.popen.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # its own session: started by this test, killed by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"{self.name}: process {pid} outlived the stop" for pid in left]


def session_members(sid: int) -> list[int]:
    """The PIDs still in session `sid` (Popen(start_new_session=True) made one per container)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
                members.append(int(stat.parent.name))
    return members


@dataclass
class Deployment:
    tmp: Path
    admin_token: str = field(default_factory=lambda: os.urandom(16).hex())
    node_token: str = field(default_factory=lambda: os.urandom(16).hex())
    running: list[Container] = field(default_factory=list)

    def volume(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        os.chown(path, IMAGE_USER_UID, IMAGE_USER_UID)
        return path

    def run(self, image: str, name: str, options: list[str], args: list[str]) -> Container:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(SCRIPT), "run", f"localhost/fedavg-{image}:{TAG}", *options, "--", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        container = Container(name, popen, log)
        self.running.append(container)
        return container

    def logs(self) -> str:
        return "\n".join(c.tail() for c in self.running)

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + WAIT_S
        last: Any = None
        while time.monotonic() < deadline:
            for container in self.running:
                if container.popen.poll() is not None:
                    pytest.fail(f"{container.name} exited while waiting for {what}\n{self.logs()}")
            last = check()
            if last:
                return last
            time.sleep(1.0)
        pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{self.logs()}")


def leftovers() -> list[str]:
    """Working containers, images other than the base, and mounts left in the store."""
    found = [f"container {c}" for c in buildah("containers", "--quiet").stdout.split()]
    images = buildah("images", "--all", "--format", "{{.Name}}:{{.Tag}}").stdout.split()
    found += [f"image {i}" for i in images if not i.startswith("localhost/fedavg-base:")]
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount {m.split()[1]}" for m in mounts if f"{CACHE}/storage" in m]
    return found


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    skip_unless_chroot_builds()
    deploy = Deployment(tmp_path)
    problems: list[str] = []
    try:
        yield deploy
    finally:
        for container in reversed(deploy.running):
            problems += container.stop()
        subprocess.run([str(SCRIPT), "clean"], timeout=300, check=False)
    assert problems + leftovers() == []


def build_images(tmp: Path) -> None:
    log = tmp / "build.log"
    with log.open("wb") as out:
        result = subprocess.run(
            [str(SCRIPT), "build"], stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
            env={**os.environ, "FEDAVG_PIP_PYTHON": sys.executable}, check=False,
        )  # fmt: skip
    assert result.returncode == 0, log.read_text()[-4000:]


def image_config(image: str) -> dict[str, Any]:
    result = buildah("inspect", "--type", "image", f"localhost/fedavg-{image}:{TAG}")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)["OCIv1"]["config"]
    return config


def test_without_root_it_skips_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        skip_unless_chroot_builds()


def test_without_the_tools_it_skips_and_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None if name != "podman" else "/x")
    with pytest.raises(pytest.skip.Exception, match=r"needs buildah, debootstrap \(\./dev test"):
        skip_unless_chroot_builds()


def start_federation(deploy: Deployment) -> tuple[str, Path]:
    """The server and two nodes, each from its image; returns the server's URL and volume."""
    url = f"http://127.0.0.1:{free_port()}"
    server_home = deploy.volume("server-home")
    deploy.run(
        "server", "server",
        ["-v", f"{server_home}:/var/lib/fedavg", "-e", f"FEDAVG_ADMIN_TOKEN={deploy.admin_token}",
         "-e", f"FEDAVG_NODE_TOKEN={deploy.node_token}", "-e", "FEDAVG_MNIST_DOWNLOAD=false",
         "-e", "EPOCH_SYNC_TIMEOUT=60", "-e", "WANDB_MODE=disabled"],
        ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]],
    )  # fmt: skip
    deploy.wait_for("the server's /health", lambda: get(f"{url}/health")[0] == 200)
    for name in ("box-1", "box-2"):
        deploy.run(
            "node", name,
            ["-v", f"{deploy.volume(name)}:/var/lib/fedavg", "-e", f"ORCHESTRATOR_URL={url}",
             "-e", f"NODE_NAME={name}", "-e", f"FEDAVG_NODE_TOKEN={deploy.node_token}",
             "-e", "WANDB_MODE=disabled"],
            ["--device", "cpu", "--threads", "1"],
        )  # fmt: skip

    def joined() -> bool:
        status, body = get(f"{url}/nodes")
        nodes = body.get("nodes", []) if status == 200 and isinstance(body, dict) else []
        return {"box-1", "box-2"} <= {n.get("name") for n in nodes}

    deploy.wait_for("both nodes to join", joined)
    return url, server_home


def train(deploy: Deployment, url: str) -> None:
    status, body = get(f"{url}/datasets/prepare-mnist", deploy.admin_token, "POST")
    assert 200 <= status < 300, (status, body, deploy.logs())
    status, body = get(f"{url}/train/mnist?epochs={EPOCHS}", deploy.admin_token, "POST")
    assert status == 202, (status, body, deploy.logs())

    def finished() -> dict[str, Any] | None:
        status, body = get(f"{url}/sync/status")
        if status != 200 or not isinstance(body, dict):
            return None
        if body.get("state") == "failed":
            pytest.fail(f"the job failed: {body}\n{deploy.logs()}")
        return body if body.get("state") == "completed" else None

    final = deploy.wait_for("the job to complete", finished)
    assert final["round"] == final["rounds"] == EPOCHS, final


def serve_from_showcase(deploy: Deployment, server_home: Path, model: Path) -> None:
    """The showcase's image reads the server's volume (read-only) and serves the model."""
    port = free_port()
    showcase = deploy.run(
        "showcase", "showcase", ["-v", f"{server_home}:/var/lib/fedavg:ro"],
        ["--host", "127.0.0.1", "--port", str(port)],
    )  # fmt: skip

    def page() -> str | None:
        status, body = get(f"http://127.0.0.1:{port}/")
        return body if status == 200 and isinstance(body, str) else None

    assert "bokeh" in deploy.wait_for("the showcase's page", page).lower()
    selected = [e for e in showcase.events() if e.get("event") == "model_selected"]
    assert selected and model.name in json.dumps(selected), showcase.tail()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)
def test_a_job_trains_across_containers_and_the_showcase_serves_it(
    deployment: Deployment,
) -> None:
    deploy = deployment
    build_images(deploy.tmp)
    for image, script in (("server", "fedavg-server"), ("node", "fedavg-node"),
                          ("showcase", "fedavg-showcase")):  # fmt: skip
        config = image_config(image)
        assert config["Entrypoint"] == [script] and config["User"] == "fedavg", config
        assert "FEDAVG_LOG_FORMAT=json" in config["Env"], config

    url, server_home = start_federation(deploy)
    train(deploy, url)
    # Saved by the server's image into its volume, as its own user; safetensors decodes it.
    models = sorted((server_home / "models").glob("*.safetensors"))
    assert models, deploy.logs()
    assert models[-1].stat().st_uid == IMAGE_USER_UID
    with safe_open(str(models[-1]), framework="numpy") as saved:
        assert list(saved.keys()), models[-1]
    serve_from_showcase(deploy, server_home, models[-1])
