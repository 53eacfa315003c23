"""The event bus: every state change is published once, stored (if it belongs on the timeline)
and fanned out to dashboard subscribers through bounded queues.

A subscriber whose queue is full is cut off rather than waited for: a browser that stops
reading must never delay a round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from server import jsonsafe
from server.store import Store

log = structlog.get_logger(__name__)

SUBSCRIBER_QUEUE = 256


@dataclass(slots=True, eq=False)  # identity: each subscriber is its own set member
class Subscriber:
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    data: dict[str, Any]
    ts: float
    run_id: str | None = None
    node_id: str | None = None


Listener = Callable[[Event], None]


class EventBus:
    """Listeners (metrics, W&B) are called synchronously and must be quick; a failing
    listener is logged and never stops the publisher."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._subscribers: set[Subscriber] = set()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        run_id: str | None = None,
        node_id: str | None = None,
        timeline: bool = True,
    ) -> None:
        """Record (when on the timeline) and broadcast; serialised once for all subscribers."""
        ts = self._clock()
        event_id = self._store.add_event(ts, kind, data, run_id, node_id) if timeline else None
        text = jsonsafe.dumps(
            {
                "type": "event",
                "id": event_id,
                "ts": ts,
                "kind": kind,
                "run_id": run_id,
                "node_id": node_id,
                "data": data,
            },
            separators=(",", ":"),
        )
        event = Event(kind, data, ts, run_id, node_id)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event_listener_failed", kind=kind)
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(text)
            except asyncio.QueueFull:
                log.warning(
                    "dashboard_subscriber_dropped", reason="not reading", queued=sub.queue.qsize()
                )
                self.unsubscribe(sub)
                sub.dropped.set()

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
