"""The console script as a real process: it starts, serves the page, logs JSON, stops cleanly.

Runs ``python -m showcase.cli`` (what ``fedavg-showcase`` calls) so it works whether or not
the package is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from showcase_support import AiohttpServer, TrainedModel, fake_orchestrator, serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def events(self) -> list[dict[str, object]]:
        """The structlog JSON lines the process wrote to stderr (other lines skipped)."""
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def showcase_process(log: Path, *args: str) -> Iterator[Running]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "showcase.cli", "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield Running(f"http://127.0.0.1:{port}/", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get_page(running: Running, timeout_s: float = 60) -> str:
    """The page's HTML, once the process answers (Panel's import takes a few seconds)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"the showcase exited: {running.log.read_text()}")
        try:
            with opener.open(running.url, timeout=10) as response:
                return str(response.read().decode())
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the showcase did not answer")


def test_serves_the_page_from_a_models_folder(models_dir: Path, tmp_path: Path) -> None:
    with showcase_process(tmp_path / "log", "--models-dir", str(models_dir)) as running:
        html = get_page(running)

    assert "bokeh" in html.lower()
    assert "cdn." not in html and "jsdelivr" not in html and "unpkg" not in html
    events = running.events()
    assert events[0]["event"] == "showcase_starting"
    assert str(models_dir) in str(events[0]["models"])
    assert any(e["event"] == "model_selected" for e in events)


async def test_serves_models_from_an_orchestrator(
    aiohttp_server: AiohttpServer, models_dir: Path, trained: TrainedModel, tmp_path: Path
) -> None:
    seen: list[str] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = fake_orchestrator(models_dir)
    app.middlewares.append(record)
    orchestrator = await serve(aiohttp_server, app)

    with showcase_process(tmp_path / "log", "--orchestrator", orchestrator) as running:
        await asyncio.to_thread(get_page, running)

    # Opening the page listed the models and downloaded the newest to load it.
    assert "/models" in seen
    assert f"/models/{trained.path.name}" in seen
