"""Logging set-up (node/logs.py): one JSON line per record, whoever logs it, and repeats capped."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from node.shared.logs import LOG_BURST, RepeatLimiter, configure_logging


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_stdlib_records_and_their_tracebacks_are_json_lines(stream: io.StringIO) -> None:
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "10.0.0.9")
    logging.getLogger("asyncio").warning("socket.send() raised exception.")
    structlog.get_logger("t").info("round_closed", round=3)

    first, second, third = records(stream)
    assert first["event"] == "Error handling request from 10.0.0.9"
    assert first["logger"] == "aiohttp.server" and first["level"] == "error"
    assert "ConnectionResetError: peer went away" in first["exception"]
    assert (second["logger"], second["level"]) == ("asyncio", "warning")
    assert (third["event"], third["round"]) == ("round_closed", 3)


def test_a_flood_of_one_error_is_capped_per_name(stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    for i in range(500):
        log.warning("upload_refused", i=i)
        logging.getLogger("aiohttp.server").error("Error handling request from %s", f"10.0.{i}.1")
    log.info("round_closed", round=1)  # another name is not held back by the flood

    lines = records(stream)
    assert len(lines) == 2 * LOG_BURST + 1
    assert sum(r["event"] == "upload_refused" for r in lines) == LOG_BURST
    assert lines[-1]["event"] == "round_closed"


def test_the_count_dropped_is_reported_once_the_window_is_over() -> None:
    clock, reports = FakeClock(), []
    limiter = RepeatLimiter(burst=3, window_s=10, clock=clock, report=lambda *r: reports.append(r))
    assert [limiter.allow("boom") for _ in range(5)] == [True] * 3 + [False] * 2
    assert reports == []
    clock.now += 10
    assert limiter.allow("boom")  # a new window: let through again, and the count said
    assert reports == [("boom", 2, 10)]
    # A name that goes quiet is still reported, when anything is next logged.
    assert [limiter.allow("other") for _ in range(4)] == [True] * 3 + [False]
    clock.now += 11
    assert limiter.allow("third")
    assert ("other", 1, 10) in reports
    clock.now += 11
    limiter.allow("third")
    assert len(reports) == 2  # nothing else was dropped, so nothing else is said


def test_the_report_is_a_json_line_too(stream: io.StringIO) -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(burst=1, window_s=10, clock=clock)  # reports through structlog
    assert [limiter.allow("disk_full") for _ in range(3)] == [True, False, False]
    clock.now += 10
    limiter.allow("disk_full")

    report = records(stream)[-1]
    assert report["event"] == "log_suppressed" and report["level"] == "warning"
    assert (report["repeated"], report["suppressed"], report["window_s"]) == ("disk_full", 2, 10)
