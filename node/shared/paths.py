"""Where fedavg keeps its files, resolved in one place for the server, nodes and showcase."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_home(env: Mapping[str, str]) -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/fedavg``, else ``~/.local/share/fedavg``."""
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "fedavg"


def fedavg_home(env: Mapping[str, str]) -> Path:
    """``FEDAVG_HOME`` when it is set, else :func:`default_home`."""
    given = env.get("FEDAVG_HOME")
    return Path(given).expanduser() if given else default_home(env)


def cpu_count() -> int:
    """The cores this process may run on (its affinity), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
