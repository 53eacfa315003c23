"""Helpers of the deploy tests: paths, a unit-file reader, a fake root for systemd.

``systemd-analyze verify`` checks that every ``ExecStart=`` binary exists and is executable,
and resolves the targets a unit is ordered against. On a test machine neither
``/opt/fedavg/venv/bin/fedavg-server`` nor a running systemd is there, so the verify tests
build a small root tree instead and pass it as ``--root``: the host's own stock units (for
``multi-user.target`` and friends), the units under test in ``etc/systemd/system``, and
stub executables at the paths the units name. Nothing outside the test's temporary
directory is touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT_SRC = DEPLOY / "systemd"
ENV_SRC = DEPLOY / "env"
INSTALL_SH = DEPLOY / "install.sh"
UNITS = ("fedavg-server.service", "fedavg-node@.service", "fedavg-showcase.service")
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))

Directive = tuple[str, str, str]  # (section, key, value)


def read_unit(path: Path) -> list[Directive]:
    """Parse a unit file into (section, key, value), keeping repeated keys in order.

    configparser cannot: systemd keys repeat (Environment=, DeviceAllow=, ...).
    """
    directives: list[Directive] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        directives.append((section, key.strip(), value.strip()))
    return directives


def values(directives: list[Directive], key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives if s == section and k == key]


def exec_paths(directives: list[Directive]) -> list[str]:
    """The binaries of every Exec*= line (without systemd's `-@:+!` prefixes)."""
    paths = []
    for _, key, value in directives:
        if key.startswith("Exec"):
            paths.append(value.split()[0].lstrip("-@:+!"))
    return paths


def environment(directives: list[Directive]) -> dict[str, str]:
    """The unit's Environment= assignments (the unit files use one per line, unquoted)."""
    env = {}
    for value in values(directives, "Environment"):
        for assignment in value.split():
            name, _, setting = assignment.partition("=")
            env[name] = setting
    return env


def env_file_names(path: Path) -> dict[str, str]:
    """Names an env file sets or documents: `NAME=value` and commented `#NAME=value` lines."""
    names = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            names[match.group(1)] = match.group(2)
    return names


def host_unit_dir() -> Path | None:
    for candidate in HOST_UNIT_DIRS:
        if (candidate / "multi-user.target").exists():
            return candidate
    return None


def need_systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    if host_unit_dir() is None:
        pytest.skip("no stock systemd units (multi-user.target) on this machine to verify against")
    return tool


def make_systemd_root(root: Path) -> Path:
    """Make `root` a tree that ``systemd-analyze verify --root`` can check its units in.

    Copies the host's stock units into root/usr/lib/systemd/system, then gives every unit
    in root/etc/systemd/system stub executables for its Exec*= binaries and empty files for
    its required EnvironmentFile= paths (only those that are missing).
    """
    host_units = host_unit_dir()
    assert host_units is not None
    stock = root / "usr/lib/systemd/system"
    if not stock.exists():
        shutil.copytree(host_units, stock, symlinks=True)
    for unit in (root / "etc/systemd/system").glob("*.service"):
        directives = read_unit(unit)
        for binary in exec_paths(directives):
            stub = root / binary.lstrip("/")
            if not stub.exists():
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\nexit 0\n")
                stub.chmod(0o755)
        for env_file in values(directives, "EnvironmentFile"):
            if env_file.startswith("-") or "%" in env_file:
                continue
            target = root / env_file.lstrip("/")
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
    return root


def instance_name(unit: str, instance: str = "gpu0") -> str:
    """A template (fedavg-node@.service) is verified as one of its instances."""
    return unit.replace("@.", f"@{instance}.")


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    tool = need_systemd_analyze()
    return subprocess.run(
        [tool, "verify", f"--root={root}", *(instance_name(u) for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
