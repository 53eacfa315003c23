"""The showcase in a browser: serving it in-process, opening the page, drawing on it.

(A uniquely named module, not ``helpers.py``: test folders here have no ``__init__.py``.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from showcase.cli import serve
from showcase.settings import Settings

TIMEOUT_MS = 20_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the showcase did not start on port {port}")


@dataclass
class Showcase:
    url: str
    models_dir: Path


def start(models_dir: Path, **overrides: Any) -> Iterator[Showcase]:
    """The showcase served in-process by the console script's ``serve()``, on a free port,
    with ``overrides`` of its settings."""
    port = free_port()
    settings = Settings(port=port, models_dir=models_dir, refresh_s=0.5, **overrides)
    server = serve(settings, threaded=True)
    try:
        wait_for_port(port)
        yield Showcase(f"http://127.0.0.1:{port}/", models_dir)
    finally:
        server.stop()


def open_app(page: Page, url: str) -> Any:
    page.goto(url)
    canvas = page.locator("#draw-canvas")
    expect(canvas).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#model-upload")).to_be_attached(timeout=TIMEOUT_MS)
    box = canvas.bounding_box()
    assert box is not None
    return box


def stroke(page: Page, box: Any, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through points given as fractions of the canvas."""
    x0, y0 = box["x"], box["y"]
    w, h = box["width"], box["height"]
    page.mouse.move(x0 + points[0][0] * w, y0 + points[0][1] * h)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x * w, y0 + y * h, steps=12)
    page.mouse.up()


SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]
