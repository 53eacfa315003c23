"""Environment values read by name: a value that cannot be read says which variable it was.

Server, nodes and showcase read their settings through these, so ``FEDAVG_PORT=abc`` is
refused as "FEDAVG_PORT='abc' is not a whole number", never as Python's "invalid literal
for int()". An empty value counts as unset (``KEY=`` in an env file leaves the default).
Ranges are not checked here: each settings object checks its own, after flags are applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SHOWN_CHARS = 60  # of a bad value, in the message


class EnvValueError(ValueError):
    """A variable whose value is not of the kind it must be; the message starts with its name."""


def text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name) or default


def whole(env: Mapping[str, str], name: str, default: int) -> int:
    found = optional_whole(env, name)
    return default if found is None else found


def optional_whole(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise _bad(name, value, "is not a whole number") from None


def number(env: Mapping[str, str], name: str, default: float) -> float:
    found = optional_number(env, name)
    return default if found is None else found


def optional_number(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise _bad(name, value, "is not a number") from None


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _bad(name, env[name], "is not a boolean (true/false)")


def choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    return check_choice(value, name, choices)


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``; else an error naming ``name`` (a variable or
    a flag) and the choices."""
    if value not in choices:
        raise _bad(name, value, f"must be one of {', '.join(choices)}")
    return value


def optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _bad(name: str, value: str, reason: str) -> EnvValueError:
    shown = value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "..."
    return EnvValueError(f"{name}={shown!r} {reason}")
