"""The event bus: every state change is published once, stored (if it belongs on the timeline)
and fanned out to dashboard subscribers through bounded queues.

A subscriber whose queue is full is cut off rather than waited for: a browser that stops
reading must never delay a round.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from server.store import Store

log = structlog.get_logger(__name__)

SUBSCRIBER_QUEUE = 256


@dataclass(slots=True, eq=False)  # identity: each subscriber is its own set member
class Subscriber:
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class EventBus:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._subscribers: set[Subscriber] = set()

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
        text = json.dumps(
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
