"""The systemd units in deploy/systemd: systemd-analyze accepts them, and they say what we promise.

How the verify tests work without a running systemd or an installed venv: see
deploy_support.make_systemd_root (stub executables in a temporary --root tree).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import (
    UNIT_SRC,
    UNITS,
    environment,
    exec_paths,
    instance_name,
    make_systemd_root,
    need_systemd_analyze,
    read_unit,
    values,
    verify,
)

# systemd-analyze security's overall exposure, times ten (its --threshold scale): 2.5 is
# well inside "OK". A sandbox setting dropped by accident pushes a unit over it.
EXPOSURE_THRESHOLD = 25


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """The repository's units, unchanged, in a root tree with stubs at /opt/fedavg/venv/bin."""
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(UNIT_SRC / unit, unit_dir / unit)
    root: Path = make_systemd_root(tmp_path)
    return root


def test_the_unit_set_is_complete() -> None:
    assert sorted(p.name for p in UNIT_SRC.glob("*.service")) == sorted(UNITS)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(unit_root: Path, unit: str) -> None:
    result = verify(unit_root, unit)
    assert result.returncode == 0, result.stderr
    # Warnings (an unknown key, a bad specifier) still exit 0: any output is a failure.
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_verify_fails_when_an_exec_binary_is_missing(unit_root: Path) -> None:
    """The harness's own check: without the stub, verify must complain (so it looks)."""
    (unit_root / "opt/fedavg/venv/bin/fedavg-server").unlink()
    result = verify(unit_root, "fedavg-server.service")
    assert result.returncode != 0
    assert "/opt/fedavg/venv/bin/fedavg-server" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_sandbox_exposure_stays_low(unit_root: Path, unit: str) -> None:
    tool = need_systemd_analyze()
    result = subprocess.run(
        [
            tool,
            "security",
            "--offline=true",
            f"--root={unit_root}",
            f"--threshold={EXPOSURE_THRESHOLD}",
            instance_name(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_runs_sandboxed_as_the_service_user(unit: str) -> None:
    d = read_unit(UNIT_SRC / unit)
    assert values(d, "User") == ["fedavg"]
    assert values(d, "Group") == ["fedavg"]
    assert values(d, "Restart") == ["on-failure"]
    assert values(d, "ProtectSystem") == ["strict"]
    assert values(d, "NoNewPrivileges") == ["yes"]
    assert values(d, "PrivateTmp") == ["yes"]
    assert values(d, "ProtectHome") == ["yes"]
    assert values(d, "CapabilityBoundingSet") == [""]
    assert values(d, "WantedBy", section="Install") == ["multi-user.target"]


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_reads_settings_from_etc_fedavg_and_logs_json(unit: str) -> None:
    d = read_unit(UNIT_SRC / unit)
    env_files = values(d, "EnvironmentFile")
    assert env_files, "no EnvironmentFile="
    assert all(f.lstrip("-").startswith("/etc/fedavg/") for f in env_files)
    assert environment(d)["FEDAVG_LOG_FORMAT"] == "json"
    assert all(p.startswith("/opt/fedavg/venv/bin/fedavg-") for p in exec_paths(d))


@pytest.mark.parametrize("unit", UNITS)
def test_writable_state_lives_under_var_lib_or_var_cache_fedavg(unit: str) -> None:
    d = read_unit(UNIT_SRC / unit)
    dirs = values(d, "StateDirectory") + values(d, "CacheDirectory")
    assert dirs and all(x == "fedavg" or x.startswith("fedavg/") for x in dirs)
    assert not values(d, "ReadWritePaths")
    # Everything the program is told to write to is one of those directories.
    env = environment(d)
    writable = [f"%S/{x}" for x in values(d, "StateDirectory")]
    writable += [f"%C/{x}" for x in values(d, "CacheDirectory")]
    for name in ("FEDAVG_CACHE_DIR", "HOME"):
        if name in env:
            assert env[name] in writable, (name, env[name])


def test_server_unit_keeps_its_state_in_var_lib_fedavg() -> None:
    d = read_unit(UNIT_SRC / "fedavg-server.service")
    assert values(d, "StateDirectory") == ["fedavg"]
    assert environment(d)["FEDAVG_HOME"] == "%S/fedavg"
    assert values(d, "EnvironmentFile") == ["/etc/fedavg/server.env"]
    assert values(d, "PrivateDevices") == ["yes"]


def test_node_template_names_the_node_after_its_instance() -> None:
    d = read_unit(UNIT_SRC / "fedavg-node@.service")
    env = environment(d)
    assert env["NODE_NAME"] == "%i"
    # Each instance has its own state and cache, so two nodes on a machine never collide.
    assert env["FEDAVG_HOME"] == "%S/fedavg/nodes/%i"
    assert env["FEDAVG_CACHE_DIR"] == "%C/fedavg/nodes/%i"
    assert values(d, "StateDirectory") == ["fedavg/nodes/%i"]
    # Common settings first, then the optional per-instance file, which wins.
    assert values(d, "EnvironmentFile") == ["/etc/fedavg/node.env", "-/etc/fedavg/node-%i.env"]


def test_node_unit_lets_the_node_reach_an_nvidia_gpu() -> None:
    d = read_unit(UNIT_SRC / "fedavg-node@.service")
    assert values(d, "PrivateDevices") == ["no"]
    assert values(d, "DevicePolicy") == ["closed"]
    allowed = {v.split()[0] for v in values(d, "DeviceAllow")}
    assert {"char-nvidia-frontend", "char-nvidia-uvm"} <= allowed
    # CUDA JIT-compiles kernels: W^X would break it.
    assert values(d, "MemoryDenyWriteExecute") in ([], ["no"])


def test_showcase_unit_reads_the_orchestrators_models_without_write_access() -> None:
    d = read_unit(UNIT_SRC / "fedavg-showcase.service")
    # No StateDirectory=: under ProtectSystem=strict /var/lib/fedavg stays read-only.
    assert values(d, "StateDirectory") == []
    env = environment(d)
    # Models come from FEDAVG_HOME/models unless showcase.env picks the API or a folder:
    # setting FEDAVG_MODELS_DIR or ORCHESTRATOR_URL here would take that choice away.
    assert env["FEDAVG_HOME"] == "%S/fedavg"
    assert "FEDAVG_MODELS_DIR" not in env and "ORCHESTRATOR_URL" not in env
    assert (env["SHOWCASE_HOST"], env["SHOWCASE_PORT"]) == ("127.0.0.1", "7860")
