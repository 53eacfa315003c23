"""Progress reports of a preparation: the callback's shape and a rate limit for it.

Readers call ``progress(stage, done, total)`` as they go (``stage`` is ``download``,
``read`` or ``write``; ``done`` of ``total`` files). They run in a worker thread, so whoever
listens must hand the report to its own loop; ``Throttled`` keeps that to a few a second.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def silent(stage: str, done: int, total: int) -> None:
    """The progress callback of a caller that does not listen."""


class Throttled:
    """Pass on each stage's first and last report, and at most one per ``interval_s`` between.

    A stage's first and last always go through, so a listener sees every stage begin and end;
    a preparation has few stages, so the rate stays bounded.
    """

    def __init__(
        self, report: Progress, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._report = report
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # readers may report from more than one thread
        self._stage: str | None = None
        self._sent_at = -math.inf

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        with self._lock:
            boundary = stage != self._stage or done >= total
            if not boundary and now - self._sent_at < self._interval_s:
                return
            self._stage, self._sent_at = stage, now
        self._report(stage, done, total)
