"""deploy/install.sh, staged into a temporary DESTDIR: what it lays down, twice, and undoes.

Staged runs (DESTDIR set) never create the user, never call systemctl and write nothing
outside DESTDIR; --no-pip keeps them to about a second (a real install pulls PyTorch).
The one test that runs pip installs a locally built wheel with --no-deps, offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import (
    INSTALL_SH,
    REPO,
    UNIT_SRC,
    UNITS,
    exec_paths,
    make_systemd_root,
    need_systemd_analyze,
    read_unit,
    values,
    verify,
)

SCRIPTS = ("fedavg-server", "fedavg-node", "fedavg-showcase")
ENV_FILES = ("server.env", "node.env", "showcase.env")
WATCHED = (Path("/etc/passwd"), Path("/etc/group"))


def run_install(
    *args: str, destdir: Path | None = None, env: dict[str, str] | None = None, timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("DESTDIR", "FEDAVG_INSTALL_SKIP_PIP")
    }
    if destdir is not None:
        full_env["DESTDIR"] = str(destdir)
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def tree(root: Path) -> dict[str, str]:
    """Every file under root (venv excluded) with its content hash: what a run laid down."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "venv" not in p.relative_to(root).parts
    }


@pytest.fixture
def machine_state() -> Iterator[dict[Path, str | None]]:
    """The host files a real install would change; the test checks they did not."""
    watched = [*WATCHED, *(Path("/etc/systemd/system") / u for u in UNITS), Path("/etc/fedavg")]
    before = {p: digest(p) if p.is_file() else str(p.exists()) for p in watched}
    yield before
    after = {p: digest(p) if p.is_file() else str(p.exists()) for p in watched}
    assert after == before, "a staged install touched the machine"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(INSTALL_SH)], check=True, timeout=30)
    assert os.access(INSTALL_SH, os.X_OK)


def test_shellcheck_is_clean() -> None:
    # ./dev test installs shellcheck (Debian's package) with the other system test tools.
    tool = shutil.which("shellcheck")
    if tool is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    root = INSTALL_SH.parent.parent
    scripts = [INSTALL_SH, root / "dev", root / ".ci" / "run"]
    result = subprocess.run([tool, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_help_lists_every_option() -> None:
    out = ok(run_install("--help"))
    for option in ("--prefix", "--destdir", "--no-pip", "--wheel-from", "--uninstall", "--purge"):
        assert option in out


def test_staged_install_lays_down_units_settings_and_venv(
    tmp_path: Path, machine_state: dict[Path, str | None]
) -> None:
    out = ok(run_install("--no-pip", destdir=tmp_path))

    units = tmp_path / "etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    for unit in UNITS:
        # Rendered for the default prefix: byte for byte the repository's unit.
        assert (units / unit).read_text() == (UNIT_SRC / unit).read_text()
        assert stat.S_IMODE((units / unit).stat().st_mode) == 0o644

    conf = tmp_path / "etc/fedavg"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o750
    for name in ENV_FILES:
        assert (conf / name).read_text() == (REPO / "deploy/env" / name).read_text()
        # Tokens and API keys go in there: not world-readable.
        assert stat.S_IMODE((conf / name).stat().st_mode) == 0o640
        assert (tmp_path / "opt/fedavg/share/env" / name).is_file()
    assert (tmp_path / "opt/fedavg/share/doc/DEPLOY.md").is_file()
    assert (tmp_path / "opt/fedavg/venv/bin/python").exists()
    assert (tmp_path / "opt/fedavg/.fedavg-install").is_file()

    # What it would have done to the machine, said instead of done.
    assert "would be created" in out
    assert "(staged, not run) systemctl daemon-reload" in out
    assert "(staged, not run) chgrp fedavg /etc/fedavg/server.env" in out
    assert "systemctl enable --now fedavg-server" in out  # the next steps


def test_running_twice_is_harmless_and_keeps_edited_settings(
    tmp_path: Path, machine_state: dict[Path, str | None]
) -> None:
    ok(run_install("--no-pip", destdir=tmp_path))
    server_env = tmp_path / "etc/fedavg/server.env"
    server_env.write_text(server_env.read_text() + "FEDAVG_HOST=0.0.0.0\n")
    first = tree(tmp_path)

    out = ok(run_install("--no-pip", destdir=tmp_path))

    assert tree(tmp_path) == first
    assert server_env.read_text().endswith("FEDAVG_HOST=0.0.0.0\n")
    assert "kept your /etc/fedavg/server.env" in out
    assert "unchanged" in out and "wrote" not in out


def test_skip_pip_from_the_environment(tmp_path: Path) -> None:
    out = ok(run_install(destdir=tmp_path, env={"FEDAVG_INSTALL_SKIP_PIP": "1"}))
    assert "skipping pip" in out
    assert not (tmp_path / "opt/fedavg/venv/bin/pip").exists()


def test_prefix_is_rendered_into_the_units(tmp_path: Path) -> None:
    ok(run_install("--no-pip", "--prefix", "/srv/fedavg", destdir=tmp_path))
    for unit in UNITS:
        d = read_unit(tmp_path / "etc/systemd/system" / unit)
        assert exec_paths(d) and all(p.startswith("/srv/fedavg/venv/bin/") for p in exec_paths(d))
        assert "/opt/fedavg" not in (tmp_path / "etc/systemd/system" / unit).read_text()
    assert (tmp_path / "srv/fedavg/venv/bin/python").exists()
    assert not (tmp_path / "opt").exists()


@pytest.mark.parametrize("prefix", ["/opt/fedavg", "/srv/fedavg"])
def test_systemd_analyze_verify_accepts_the_installed_units(tmp_path: Path, prefix: str) -> None:
    """Verify the units as install.sh rendered them, in DESTDIR used as the root.

    --no-pip leaves the venv without console scripts; make_systemd_root puts stubs where
    the units' ExecStart= points (under DESTDIR), which is all verify looks at.
    """
    need_systemd_analyze()
    ok(run_install("--no-pip", "--prefix", prefix, destdir=tmp_path))
    make_systemd_root(tmp_path)
    for script in SCRIPTS:
        assert (tmp_path / prefix.lstrip("/") / "venv/bin" / script).exists()
    result = verify(tmp_path, *UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_uninstall_removes_units_and_venv_but_keeps_settings(
    tmp_path: Path, machine_state: dict[Path, str | None]
) -> None:
    ok(run_install("--no-pip", destdir=tmp_path))
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "fedavg-node@gpu0.service").symlink_to("/etc/systemd/system/fedavg-node@.service")
    (wants / "other.service").symlink_to("/etc/systemd/system/other.service")

    out = ok(run_install("--uninstall", destdir=tmp_path))

    assert not list((tmp_path / "etc/systemd/system").glob("*.service"))
    assert [p.name for p in wants.iterdir()] == ["other.service"]
    assert not (tmp_path / "opt/fedavg").exists()
    assert sorted(p.name for p in (tmp_path / "etc/fedavg").iterdir()) == sorted(ENV_FILES)
    assert "disabled fedavg-node@gpu0.service" in out
    assert "--purge removes them" in out
    ok(run_install("--uninstall", destdir=tmp_path))  # twice: nothing left, still fine


def test_uninstall_purge_removes_settings_and_data(tmp_path: Path) -> None:
    ok(run_install("--no-pip", destdir=tmp_path))
    (tmp_path / "var/lib/fedavg/models").mkdir(parents=True)
    out = ok(run_install("--uninstall", "--purge", destdir=tmp_path))
    assert not (tmp_path / "etc/fedavg").exists()
    assert not (tmp_path / "var/lib/fedavg").exists()
    assert "(staged, not run) userdel fedavg" in out


def test_uninstall_leaves_a_venv_it_did_not_install(tmp_path: Path) -> None:
    foreign = tmp_path / "opt/fedavg/venv"
    foreign.mkdir(parents=True)
    result = run_install("--uninstall", destdir=tmp_path)
    ok(result)
    assert foreign.exists()
    assert "left alone" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--prefix", "/"], {}, "--prefix must be"),
        (["--prefix", "opt/fedavg"], {}, "--prefix must be"),
        (["--prefix", "/opt"], {}, "--prefix must be"),
        (["--prefix", "/opt/fe davg"], {}, "--prefix must be"),
        (["--purge"], {}, "--purge goes with --uninstall"),
        (["--bogus"], {}, "unknown option"),
        (["--prefix"], {}, "--prefix needs a value"),
        (["--wheel-from", "/nonexistent/wheels"], {}, "no directory"),
        ([], {"DESTDIR": "relative/stage"}, "DESTDIR must be an absolute path"),
        ([], {"FEDAVG_INSTALL_SKIP_PIP": "maybe"}, "must be 0 or 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    skip_pip = [] if "FEDAVG_INSTALL_SKIP_PIP" in env else ["--no-pip"]
    env = {"DESTDIR": str(tmp_path / "stage"), **env}
    result = run_install(*skip_pip, *args, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "stage").exists()


def test_prefix_the_sandbox_hides_is_warned_about(tmp_path: Path) -> None:
    result = run_install("--no-pip", "--prefix", "/home/me/fedavg", destdir=tmp_path)
    ok(result)
    assert "hidden from the services" in result.stderr


def test_equals_form_of_options(tmp_path: Path) -> None:
    ok(run_install("--no-pip", "--prefix=/srv/fa", f"--destdir={tmp_path}"))
    assert (tmp_path / "etc/systemd/system/fedavg-server.service").read_text().count(
        "/srv/fa/venv/bin/fedavg-server"
    ) == 1


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of this checkout, built from a copy (the checkout gets no build/ folder)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "tests")
    shutil.copytree(REPO, src, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(wheels), str(src)],
        check=True,
        timeout=180,
    )  # fmt: skip
    return wheels


@pytest.mark.slow
def test_install_with_pip_from_a_wheel_directory(tmp_path: Path) -> None:
    """The pip path, offline: --wheel-from a local wheel, --no-deps (no PyTorch download)."""
    wheels = _build_wheel(tmp_path)
    stage = tmp_path / "stage"
    args = ("--wheel-from", str(wheels), "--no-deps", "--python", sys.executable)
    out = ok(run_install(*args, destdir=stage, timeout=300))
    bin_dir = stage / "opt/fedavg/venv/bin"
    for script in SCRIPTS:
        assert os.access(bin_dir / script, os.X_OK), f"no console script {script}"
    assert "installing fedavg from wheels" in out

    again = ok(run_install(*args, destdir=stage, timeout=300))  # an upgrade in place
    assert "venv" in again and all((bin_dir / s).exists() for s in SCRIPTS)

    # The installed units name exactly these binaries (under the prefix, without DESTDIR).
    for unit in UNITS:
        for binary in exec_paths(read_unit(stage / "etc/systemd/system" / unit)):
            assert (stage / binary.lstrip("/")).exists(), binary
    assert values(read_unit(stage / "etc/systemd/system/fedavg-server.service"), "User") == [
        "fedavg"
    ]


def fake_program(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / name
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    return program


def set_values(path: Path) -> dict[str, str]:
    """The active (uncommented) NAME=value lines of an env file."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_an_old_python_is_refused_first_with_the_ways_out(tmp_path: Path) -> None:
    python310 = fake_program(tmp_path / "bin", "python3.10", "echo 3.10")
    stage = tmp_path / "stage"
    result = run_install("--no-pip", "--python", str(python310), destdir=stage)
    assert result.returncode != 0
    assert f"{python310} is Python 3.10; fedavg needs 3.11 or newer" in result.stderr
    assert "Ubuntu 22.04 ships 3.10" in result.stderr
    assert "ppa:deadsnakes/ppa" in result.stderr and "uv python install" in result.stderr
    assert not stage.exists()  # said before anything is written


def no_gpu_here() -> bool:
    return shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists()


@pytest.mark.skipif(not no_gpu_here(), reason="this machine has an NVIDIA GPU")
def test_a_machine_without_a_gpu_gets_the_cpu_torch_index(tmp_path: Path) -> None:
    out = ok(run_install("--no-pip", destdir=tmp_path / "stage"))
    assert "no NVIDIA GPU here" in out
    assert "CPU-only PyTorch from https://download.pytorch.org/whl/cpu" in out
    out = ok(run_install("--no-pip", "--torch-index", "pypi", destdir=tmp_path / "again"))
    assert "whl/cpu" not in out and "PyTorch from PyPI (--torch-index pypi)" in out


def test_a_machine_with_a_gpu_keeps_the_cuda_build(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "nvidia-smi", "exit 0")
    path = f"{bin_dir}:{os.environ['PATH']}"
    out = ok(run_install("--no-pip", destdir=tmp_path / "stage", env={"PATH": path}))
    assert "an NVIDIA GPU is here" in out and "whl/cpu" not in out
    index = "https://download.pytorch.org/whl/cu126"
    out = ok(run_install("--no-pip", "--torch-index", index, destdir=tmp_path / "again"))
    assert f"PyTorch from {index} (--torch-index)" in out


def test_role_server_writes_the_bind_address_tokens_and_host_name(tmp_path: Path) -> None:
    args = ("--no-pip", "--role", "server", "--orchestrator", "http://orch.lan:11999")
    out = ok(run_install(*args, destdir=tmp_path, env={"FEDAVG_ADMIN_TOKEN": "admin-tok"}))
    server_env = tmp_path / "etc/fedavg/server.env"
    values = set_values(server_env)
    assert values["FEDAVG_HOST"] == "0.0.0.0"
    assert values["FEDAVG_ALLOWED_HOSTS"] == "orch.lan"
    assert values["FEDAVG_ADMIN_TOKEN"] == "admin-tok"
    assert len(values["FEDAVG_NODE_TOKEN"]) >= 32  # generated
    assert values["FEDAVG_NODE_TOKEN"] not in out  # secrets are not printed
    assert stat.S_IMODE(server_env.stat().st_mode) == 0o640
    # The documented line became the setting: the explanation above it is still there.
    text = server_env.read_text()
    assert "#FEDAVG_HOST=" not in text and "Address to listen on" in text
    assert set_values(tmp_path / "etc/fedavg/node.env") == {}

    again = ok(run_install(*args, destdir=tmp_path))  # a rerun keeps what is set
    assert set_values(server_env) == values
    assert "kept FEDAVG_NODE_TOKEN from your /etc/fedavg/server.env" in again


def test_role_server_on_an_address_needs_no_allowed_host(tmp_path: Path) -> None:
    args = ("--no-pip", "--role", "server", "--orchestrator", "http://10.0.0.1:11999")
    ok(run_install(*args, destdir=tmp_path))
    assert "FEDAVG_ALLOWED_HOSTS" not in set_values(tmp_path / "etc/fedavg/server.env")


def test_role_node_writes_the_orchestrator_and_the_join_token(tmp_path: Path) -> None:
    urls = "http://orch.lan:11999,http://10.0.0.2:11999"
    args = ("--no-pip", "--role", "node", "--orchestrator", urls)
    ok(run_install(*args, destdir=tmp_path, env={"FEDAVG_NODE_TOKEN": "join-tok"}))
    values = set_values(tmp_path / "etc/fedavg/node.env")
    assert values == {"ORCHESTRATOR_URL": urls, "FEDAVG_NODE_TOKEN": "join-tok"}
    assert set_values(tmp_path / "etc/fedavg/server.env") == {}


def test_role_node_without_a_token_says_where_to_put_it(tmp_path: Path) -> None:
    args = ("--no-pip", "--role", "node", "--orchestrator", "http://orch.lan:11999")
    result = run_install(*args, destdir=tmp_path)
    ok(result)
    assert "no FEDAVG_NODE_TOKEN given" in result.stderr and "/etc/fedavg/node.env" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--role", "node"], {}, "--role node needs --orchestrator URL"),
        (["--role", "worker"], {}, "--role must be server or node"),
        (["--orchestrator", "http://o:1"], {}, "--orchestrator goes with --role"),
        (["--role", "node", "--orchestrator", "o:11999"], {}, "is not a URL like"),
        (["--role", "node", "--orchestrator", "http://o:1 #x"], {}, "is not a URL like"),
        (["--role", "server"], {"FEDAVG_NODE_TOKEN": "a b"}, "may hold only"),
    ],
)
def test_bad_role_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_install("--no-pip", *args, env={"DESTDIR": str(tmp_path / "stage"), **env})
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "stage").exists()
