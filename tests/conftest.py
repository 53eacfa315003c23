"""Fixtures shared by every test tier: Debian's Chromium for Playwright, and an offline guard.

Browser tests never download a browser: pytest-playwright is pointed at /usr/bin/chromium.
Each page is guarded so that any request leaving loopback is aborted and recorded; tests
assert the list is empty, which is also how we prove the UIs work on an offline cluster.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def pytest_configure(config: pytest.Config) -> None:
    # pytest 9 deprecates pytest-playwright's session fixtures defined as methods (its
    # base_url); filter that one warning here rather than drop `filterwarnings = error`.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Session-scoped fixtures defined as instance methods are deprecated"
        ":pytest.PytestRemovedIn10Warning",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Playwright's sync API (what pytest-playwright uses) keeps its event loop running in the
    # main thread from the first browser test until the session ends, so any asyncio test
    # after it fails with "Cannot run the event loop while another loop is running". Run
    # browser tests last; the sort is stable, so every other order is kept.
    items.sort(key=lambda item: "page" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def browser_type_launch_args(
    browser_type_launch_args: dict[str, Any], browser_name: str
) -> dict[str, Any]:
    if browser_name != "chromium":
        pytest.skip("only Debian's chromium is installed")
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./dev test installs it when run as root)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture
def offline_guard(page: Any) -> Iterator[list[str]]:
    """Abort and record every request that is not to loopback; the test asserts it stays empty."""
    leaked: list[str] = []

    def route(route: Any) -> None:
        url = route.request.url
        host = urlparse(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in LOOPBACK_HOSTS:
            route.continue_()
        else:
            leaked.append(url)
            route.abort()

    page.route("**/*", route)
    yield leaked


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
