"""Following a job over the dashboard socket: a line per closed round, and on a terminal a
live board of the nodes (rich's ``Live``) under them. ``fedavg train``, ``fedavg watch`` and
``fedavg-demo`` all follow through here, so they show the same thing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live

from server.console.errors import ServerFailed
from server.console.views import ENDED, NodeBoard, RoundLines

LIVE_REFRESH_PER_S = 8


def print_line(console: Console, line: str) -> None:
    """Plain text, never wrapped or marked up: scripts and tests read these lines."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_lines(console: Console, lines: Iterable[str]) -> None:
    for line in lines:
        print_line(console, line)


async def receive_snapshot(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The dashboard socket's first frame: ``{"status", "nodes", "timeline"}``."""
    msg = await ws.receive()
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise ServerFailed("the dashboard socket sent no snapshot: is this a fedavg orchestrator?")
    snapshot: dict[str, Any] = json.loads(msg.data)
    return snapshot


async def follow(
    ws: aiohttp.ClientWebSocketResponse,
    board: NodeBoard,
    console: Console,
    closed: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Show the job's rounds (``closed`` first: those that closed before we looked) until it
    ends; returns its final status (``state``, ``final_accuracy``, ``model_url``, ``error``)."""
    lines = RoundLines(board)
    print_line(console, lines.header)
    for entry in closed:
        print_lines(console, lines.closed(entry))
    live = (
        Live(board.render(), console=console, refresh_per_second=LIVE_REFRESH_PER_S)
        if console.is_terminal
        else None
    )
    with live or contextlib.nullcontext():
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            board.apply(event)
            if event.get("run_id") == board.job_id:
                if event.get("kind") == "round_closed":
                    print_lines(console, lines.closed(event["data"]))
                elif event.get("kind") in ENDED:
                    print_lines(console, lines.end())
                    if live is not None:
                        live.update(board.render(), refresh=True)
                    return ended_status(board, event)
            if live is not None:
                live.update(board.render())
    raise ServerFailed("the orchestrator closed the dashboard socket before the job ended")


def ended_status(board: NodeBoard, event: Mapping[str, Any]) -> dict[str, Any]:
    """A job's end as ``/sync/status`` would show it, from its last event."""
    data = event.get("data") or {}
    return {
        "run_id": board.job_id,
        "state": ENDED[str(event["kind"])],
        "round": board.round,
        "rounds": board.rounds,
        "final_accuracy": data.get("final_accuracy"),
        "model_url": data.get("model_url") or None,
        "model_name": data.get("model_name"),
        "data_mode": "local" if board.local else "shards",
        "error": data.get("error"),
    }
