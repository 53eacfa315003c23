"""The container files in deploy/docker agree with the units (no Docker daemon needed).

These read the files: base images, a non-root user, the same variable names and data
directory as the units, entry points that are real console scripts, a build context that
leaves the venv and git history out, and a compose file that follows the Compose
Specification. test_containers.py builds the images and runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from deploy_support import DEPLOY, ENV_SRC, REPO, env_file_names

DOCKER = DEPLOY / "docker"
# The Compose Specification's JSON schema, copied from github.com/compose-spec/compose-spec
# (schema/compose-spec.json at 170098ba07d9, 2026-06-23; Apache-2.0): what `docker compose`
# itself validates against. jsonschema_rs comes with schemathesis, a test dependency.
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
IMAGES = {
    "Dockerfile.server": ("fedavg-server", "server.env"),
    "Dockerfile.node": ("fedavg-node", "node.env"),
    "Dockerfile.node-gpu": ("fedavg-node", "node.env"),
    "Dockerfile.showcase": ("fedavg-showcase", "showcase.env"),
}
# Image plumbing rather than fedavg settings.
PLUMBING = {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "PATH", "HOME"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            result.append((op.upper(), args.strip()))
    return result


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ops = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    return ops[last_from:]


def env_names(ops: list[tuple[str, str]]) -> dict[str, str]:
    names = {}
    for op, args in ops:
        if op == "ENV":
            for name, value in re.findall(r"([A-Z][A-Z0-9_]*)=(\S+)", args):
                names[name] = value
    return names


def console_scripts() -> set[str]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["project"]["scripts"])


def test_every_image_is_there() -> None:
    dockerfiles = {p.name for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore"}
    assert dockerfiles == set(IMAGES)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_runs_the_right_console_script_as_a_non_root_user(name: str) -> None:
    ops = final_stage(DOCKER / name)
    script, _ = IMAGES[name]
    entrypoint = [args for op, args in ops if op == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1].startswith(f'["{script}"')
    assert script in console_scripts()
    users = [args for op, args in ops if op == "USER"]
    assert users == ["fedavg"]
    # Everything after USER runs unprivileged; installs happen before it.
    after_user = ops[[op for op, _ in ops].index("USER") :]
    assert not [a for op, a in after_user if op == "RUN"]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_base_and_python(name: str) -> None:
    ops = instructions(DOCKER / name)
    bases = [args.split()[0] for op, args in ops if op == "FROM"]
    if name == "Dockerfile.node-gpu":
        args = dict(re.findall(r"ARG (\w+)=(\S+)", (DOCKER / name).read_text()))
        assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")
        assert bases[-1] == "${CUDA_IMAGE}"
        assert "download.pytorch.org/whl/cu" in args["TORCH_INDEX"]
    else:
        # Users get python:3.11-slim and PyTorch's CPU index; build-and-run.sh passes others.
        args = build_args(DOCKER / name)
        assert args["BASE_IMAGE"] == "python:3.11-slim"
        assert bases == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
        # No GPU in these images: the CPU wheel is a tenth of the size.
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
        assert args["TORCH_PACKAGES"] == "torch torchvision"
        assert args["LEAVE_OUT"] == ""


def build_args(dockerfile: Path) -> dict[str, str]:
    """Each ARG's default, quotes removed (an ARG without `=` has none)."""
    return {
        name: value.strip('"')
        for op, args in instructions(dockerfile)
        if op == "ARG" and "=" in args
        for name, _, value in [args.partition("=")]
    }


def test_cpu_images_share_every_step_up_to_fedavgs_install() -> None:
    """A builder with a layer cache (buildah --layers, docker) installs torch and fedavg's
    requirements once for all three."""

    def shared(name: str) -> list[tuple[str, str]]:
        ops = instructions(DOCKER / name)
        install = next(i for i, (op, a) in enumerate(ops) if op == "RUN" and "fedavg-*.whl" in a)
        return ops[: install + 1]

    server = shared("Dockerfile.server")
    assert any(op == "RUN" and "$TORCH_PACKAGES" in args for op, args in server)
    assert shared("Dockerfile.node") == server
    assert shared("Dockerfile.showcase") == server


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_settings_use_the_units_names(name: str) -> None:
    _, env_file = IMAGES[name]
    documented = env_file_names(ENV_SRC / env_file)
    names = env_names(final_stage(DOCKER / name))
    unknown = names.keys() - documented.keys() - PLUMBING
    assert not unknown, f"{name} sets {sorted(unknown)}, which {env_file} does not document"
    assert names.get("FEDAVG_LOG_FORMAT") == "json"
    if "FEDAVG_HOME" in names:
        assert names["FEDAVG_HOME"] == "/var/lib/fedavg"  # as under systemd
    assert "/opt/fedavg/venv/bin" in names["PATH"]  # as install.sh lays it out


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_build_context_leaves_out_the_venv_and_git(name: str) -> None:
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    assert {".venv", ".git"} <= set(ignore)
    # pip needs these to build the wheel.
    for needed in ("pyproject.toml", "server", "node", "showcase"):
        assert needed not in ignore


def test_compose_builds_every_image_and_wires_nodes_to_the_server() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    built = {s["build"]["dockerfile"] for s in services.values()}
    assert built == {f"deploy/docker/{name}" for name in IMAGES}
    for service in services.values():
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    for name in ("node-1", "node-2", "node-gpu"):
        env = services[name]["environment"]
        assert env["ORCHESTRATOR_URL"] == "http://server:11999"
        assert env["FEDAVG_NODE_TOKEN"].startswith("${FEDAVG_NODE_TOKEN")
    server_env = services["server"]["environment"]
    assert {"FEDAVG_ADMIN_TOKEN", "FEDAVG_NODE_TOKEN"} <= server_env.keys()
    # Published on loopback only: the demo is not exposed to the network by accident.
    assert services["server"]["ports"] == ["127.0.0.1:11999:11999"]


def test_dockerfiles_point_at_paths_that_exist() -> None:
    for name in IMAGES:
        text = (DOCKER / name).read_text()
        assert f"-f deploy/docker/{name} " in text, f"{name}: no build command in its header"
    assert Path(DOCKER / "compose.yaml").exists()


def compose_errors(compose: object) -> list[str]:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.validator_for(json.loads(COMPOSE_SCHEMA.read_text()))
    return [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(compose)]


def test_compose_file_follows_the_compose_specification() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose_errors(compose) == []
    # The check can fail: a misspelt key is caught.
    compose["services"]["server"]["restart_policy"] = "always"
    assert compose_errors(compose)


def compose_command() -> list[str] | None:
    """Docker's compose plugin where it is installed, else Debian's ``docker-compose`` (the
    Python implementation, which ``./dev test`` installs), else None."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone is not None else None


def test_docker_compose_accepts_the_file() -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip(
            "neither docker compose nor docker-compose is installed (Debian: docker-compose)"
        )
    env = {**os.environ, "FEDAVG_ADMIN_TOKEN": "admin-token", "FEDAVG_NODE_TOKEN": "node-token"}
    result = subprocess.run(
        [*compose, "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_build_script_is_shellcheck_clean() -> None:
    # ./dev test installs shellcheck (Debian's package) with the other system test tools.
    tool = shutil.which("shellcheck")
    if tool is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    script = DOCKER / "build-and-run.sh"
    result = subprocess.run(
        [tool, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout
