"""Connected nodes: who they are, what they are doing, and their outbound frame queue.

Each node socket has one bounded outbound queue drained by one writer task, so a node that
cannot keep up is disconnected instead of stalling whoever sends to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSCloseCode

from node.protocol import Frame, Hello, encode

log = structlog.get_logger(__name__)

OUTBOX_FRAMES = 64


@dataclass(slots=True)
class NodeSession:
    node_id: str
    name: str
    capacity: float
    device: str
    version: str
    session_token: str
    connected_at: float
    last_seen: float
    outbox: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(OUTBOX_FRAMES))
    connected: bool = True
    state: str = "idle"
    job_id: str | None = None
    round: int = 0
    batch: int = 0
    batches: int = 0
    loss: float | None = None
    val_accuracy: float | None = None
    shard_samples: int | None = None
    close_code: int = WSCloseCode.OK

    def send(self, frame: Frame) -> bool:
        """Queue a frame; False (and the socket is asked to close) if the node is not keeping up."""
        if not self.connected:
            return False
        try:
            self.outbox.put_nowait(encode(frame))
        except asyncio.QueueFull:
            log.warning("node_outbox_full", node_id=self.node_id)
            self.close()
            return False
        return True

    def close(self, code: int = WSCloseCode.OK) -> None:
        """Ask the writer task to close the socket (it drains what is queued first)."""
        if self.connected:
            self.close_code = code
        self.connected = False
        # When the queue is full the writer stops on its own once it has drained it.
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(None)

    def view(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "capacity": round(self.capacity, 1),
            "device": self.device,
            "version": self.version,
            "connected": self.connected,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen,
            "state": self.state,
            "job_id": self.job_id,
            "round": self.round,
            "batch": self.batch,
            "batches": self.batches,
            "loss": self.loss,
            "val_accuracy": self.val_accuracy,
            "shard_samples": self.shard_samples,
        }


class NodeRegistry:
    """Every node seen since start; ``connected`` holds those with a live socket."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeSession] = {}
        self._by_token: dict[str, NodeSession] = {}

    def join(self, hello: Hello, now: float) -> tuple[NodeSession, NodeSession | None]:
        """Register a node; returns it and the older session of the same id it replaces."""
        previous = self.nodes.get(hello.node_id)
        if previous is not None:
            self._by_token.pop(previous.session_token, None)
        session = NodeSession(
            node_id=hello.node_id,
            name=hello.name,
            capacity=hello.capacity,
            device=hello.device,
            version=hello.version,
            session_token=secrets.token_urlsafe(24),
            connected_at=now,
            last_seen=now,
        )
        self.nodes[hello.node_id] = session
        self._by_token[session.session_token] = session
        return session, previous if previous is not None and previous.connected else None

    def leave(self, session: NodeSession) -> bool:
        """Mark a session gone; False when a newer session of that node already replaced it."""
        session.connected = False
        session.state = "offline"
        self._by_token.pop(session.session_token, None)
        return self.nodes.get(session.node_id) is session

    def by_token(self, token: str) -> NodeSession | None:
        # The dict finds the candidate; compare_digest makes the final say constant-time.
        session = self._by_token.get(token)
        if session is None or not secrets.compare_digest(
            session.session_token.encode(), token.encode()
        ):
            return None
        return session

    def connected(self) -> list[NodeSession]:
        return [s for s in self.nodes.values() if s.connected]
