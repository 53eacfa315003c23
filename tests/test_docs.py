"""The docs name tests that exist: a moved or renamed test must take its rows with it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAD_INPUT = ROOT / "docs" / "bad-input.md"


def _test_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names |= set(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_test_file_the_bad_input_table_names_exists() -> None:
    named = set(re.findall(r"`((?:\w+/)+test_\w+\.py)", BAD_INPUT.read_text()))
    assert named, "the table names no test files: has its format changed?"
    missing = sorted(p for p in named if not (ROOT / "tests" / p).is_file())
    assert not missing, f"docs/bad-input.md names test files that do not exist: {missing}"


def test_every_test_the_bad_input_table_names_exists() -> None:
    text = BAD_INPUT.read_text()
    named = set(re.findall(r"::(test_\w+)(…)?", text))
    assert named, "the table names no tests: has its format changed?"
    known = _test_names()
    missing = sorted(
        name + ("…" if prefix else "")
        for name, prefix in named
        if (not any(k.startswith(name) for k in known) if prefix else name not in known)
    )
    assert not missing, f"docs/bad-input.md names tests that do not exist: {missing}"
