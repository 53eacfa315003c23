"""Fixtures of the dashboard's browser tests: the page's errors, and a real orchestrator.

Each test starts its own ``fedavg-server`` (and the nodes it needs) on a free loopback port
under its own ``FEDAVG_HOME``, through the same ``LocalCluster`` the demo uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page

from server.demo.local_cluster import LocalCluster
from tests.browser.dashboard_page import QUICK, running_cluster


@pytest.fixture
def page_errors(page: Page) -> list[str]:
    """Console errors and uncaught exceptions of the page; tests assert the list stays empty."""
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A healthy orchestrator with no node yet; jobs train at most 3 batches a round."""
    with running_cluster(tmp_path, QUICK) as running:
        yield running
