"""Failpoints: named places where a crash-consistency test can make the server die (SIGKILL).

``FEDAVG_FAILPOINTS=checkpoint.before_rename@2,final_model.before_commit`` kills the process
the 2nd time the first point is reached, and the 1st time the second one is. Unset (always,
outside tests), each check is one set lookup. Process-wide on purpose: a crash is too.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import structlog

log = structlog.get_logger(__name__)

POINTS = frozenset(
    {
        "upload.mid_body",  # part of an upload body received
        "aggregation.after_fold",  # an upload folded into the running sum, round still open
        "checkpoint.before_rename",  # round checkpoint in its temp file, not yet renamed
        "checkpoint.before_commit",  # checkpoint renamed, its SQLite row not yet written
        "final_model.before_rename",
        "final_model.before_commit",  # final model written, run not yet marked completed
    }
)

_armed: dict[str, int] = {}
_hits: Counter[str] = Counter()


def arm(spec: str) -> None:
    """Parse ``name[@n],...``; unknown names are a start-up error, not a silent no-op."""
    _armed.clear()
    _hits.clear()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition("@")
        if name not in POINTS:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
        _armed[name] = int(nth or "1")


def reach(name: str) -> None:
    if name not in _armed:
        return
    _hits[name] += 1
    if _hits[name] == _armed[name]:
        log.warning("failpoint_crash", point=name, hit=_hits[name])
        os.kill(os.getpid(), signal.SIGKILL)
