"""TLS end to end: the server on a certificate the test makes, nodes trusting it via --ca-cert."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from server.demo.local_cluster import LocalCluster, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is missing"),
]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_federation_over_tls_and_untrusting_nodes_are_refused(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    env = {"FEDAVG_MNIST_DOWNLOAD": "false"}
    with LocalCluster(home=tmp_path / "home", port=free_port(), env=env, ca_file=cert) as cluster:
        cluster.start_server("--tls-cert", str(cert), "--tls-key", str(key))
        cluster.wait_healthy()
        for name in ("node-1", "node-2"):
            cluster.start_node(name, "--ca-cert", str(cert), threads=1)
        # This one does not trust the certificate: it must never join.
        cluster.start_node("untrusting", threads=1)
        cluster.wait_nodes(2)
        cluster.request("POST", "/datasets/prepare-mnist")
        cluster.request("POST", "/train/mnist?epochs=2")
        status = cluster.wait_job(timeout=180)
        nodes = cluster.request("GET", "/nodes")["nodes"]

        assert status["state"] == "completed"
        assert sorted(h["contributors"] for h in status["history"])[0] == ["node-1", "node-2"]
        assert sorted(n["name"] for n in nodes) == ["node-1", "node-2"]
        deadline = time.monotonic() + 30
        log = cluster.log_dir / "untrusting.log"
        while "CERTIFICATE_VERIFY_FAILED" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "CERTIFICATE_VERIFY_FAILED" in log.read_text()
