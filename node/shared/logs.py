"""structlog set-up, done once per entry point: JSON lines off a terminal, colours on one.

The standard library's records (aiohttp's and asyncio's own loggers) go through the same
renderer, so a JSON log is JSON on every line, tracebacks included. Both kinds pass a
``RepeatLimiter``: a flood of one error (a connection storm, a misbehaving peer) costs a few
lines and a count, not a disk.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

LOG_BURST = 20  # records of one event name let through per window
LOG_WINDOW_S = 10.0

log = structlog.get_logger(__name__)


class RepeatLimiter:
    """Lets at most ``burst`` records of each event name through per ``window_s`` seconds.

    The rest are dropped and counted; when a name's window is over, one ``log_suppressed``
    line says how many of it were dropped. A structlog processor (keyed by the event) and a
    ``logging`` filter (keyed by logger and message template, so "Error handling request
    from <peer>" is one name whatever the peer). Thread-safe: evaluation and W&B log from
    threads.
    """

    def __init__(
        self,
        burst: int = LOG_BURST,
        window_s: float = LOG_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._report = report or _report_suppressed
        self._lock = threading.Lock()
        self._windows: dict[str, list[Any]] = {}  # name -> [window start, seen in it]
        self._next_sweep = clock() + window_s

    def allow(self, name: str) -> bool:
        now = self._clock()
        with self._lock:
            ended = self._sweep(now) if now >= self._next_sweep else []
            window = self._windows.get(name)
            if window is None or now - window[0] >= self.window_s:
                if window is not None and window[1] > self.burst:
                    ended.append((name, window[1] - self.burst))
                window = self._windows[name] = [now, 0]
            window[1] += 1
            allowed = window[1] <= self.burst
        for ended_name, dropped in ended:  # outside the lock: the report is logged too
            self._report(ended_name, dropped, self.window_s)
        return bool(allowed)

    def _sweep(self, now: float) -> list[tuple[str, int]]:
        """Forget the windows that are over, returning those that dropped records."""
        self._next_sweep = now + self.window_s
        ended = [(n, w) for n, w in self._windows.items() if now - w[0] >= self.window_s]
        for name, _ in ended:
            del self._windows[name]
        return [(n, w[1] - self.burst) for n, w in ended if w[1] > self.burst]

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if not self.allow(str(event_dict.get("event"))):
            raise structlog.DropEvent
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        return self.allow(f"{record.name}:{record.msg}")


def _report_suppressed(name: str, dropped: int, window_s: float) -> None:
    log.warning("log_suppressed", repeated=name[:200], suppressed=dropped, window_s=window_s)


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    limiter = RepeatLimiter()
    stamp: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            limiter,
            structlog.contextvars.merge_contextvars,
            *stamp,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # aiohttp and friends log through the standard library: same stream, same renderer,
    # the same limit on repeats, and the same level (at least warnings).
    handler = logging.StreamHandler(stream)
    handler.addFilter(limiter.filter)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamp],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=max(numeric_level, logging.WARNING), force=True)
