"""deploy/README.md: the "Deploy on several machines" text names what it must."""

from __future__ import annotations

import re

import pytest
from deploy_support import DEPLOY, UNITS

TEXT = (DEPLOY / "README.md").read_text()


def test_it_is_the_deploy_section() -> None:
    assert TEXT.startswith("## Deploy on several machines\n")


@pytest.mark.parametrize(
    "needle",
    [
        "deploy/install.sh",  # install on each machine
        "systemctl enable --now fedavg-server",  # enable which units
        "systemctl enable --now fedavg-node@",
        "systemctl enable --now fedavg-showcase",
        "11999/tcp",  # open which ports
        "7860/tcp",
        "FEDAVG_NODE_TOKEN",  # set which tokens
        "FEDAVG_ADMIN_TOKEN",
        "ORCHESTRATOR_URL",
        "FEDAVG_HOST=0.0.0.0",
        "--uninstall",
    ],
)
def test_it_covers(needle: str) -> None:
    assert needle in TEXT


def test_it_names_every_unit() -> None:
    for unit in UNITS:
        assert unit in TEXT


def test_every_option_it_shows_exists_in_install_sh() -> None:
    script = (DEPLOY / "install.sh").read_text()
    for option in set(re.findall(r"`(--[a-z-]+)", TEXT)):
        assert f"{option})" in script or f"{option} |" in script or f"{option}=" in script, option
