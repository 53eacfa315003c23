"""The house rules on the shape of the code (STYLE.md), checked over every module with ``ast``.

No class over 300 lines, no function over 50 (from ``def`` to its last line, docstring
included), a docstring on every module whose first line says something, and no environment
reads in the pure core (``server/core/``): its callers pass settings in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "node", "showcase")
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 50
ENVIRONMENT_READS = ("environ", "getenv", "getenvb")


def modules(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, node: ast.AST | None = None) -> str:
    name = path.relative_to(ROOT).as_posix()
    return f"{name}:{node.lineno}" if isinstance(node, ast.stmt) else name


def lines_of(node: ast.stmt) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def too_long(kinds: tuple[type[ast.stmt], ...], limit: int) -> list[str]:
    found = []
    for path in modules(*PACKAGES):
        for node in ast.walk(parsed(path)):
            if isinstance(node, kinds) and lines_of(node) > limit:
                assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                found.append(f"{where(path, node)} {node.name} ({lines_of(node)} lines)")
    return found


def test_the_scan_sees_every_package() -> None:
    for package in PACKAGES:
        assert any(True for _ in modules(package)), f"no modules found in {package}/"


def test_no_class_is_over_300_lines() -> None:
    offenders = too_long((ast.ClassDef,), MAX_CLASS_LINES)
    assert not offenders, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(offenders)


def test_no_function_is_over_50_lines() -> None:
    offenders = too_long((ast.FunctionDef, ast.AsyncFunctionDef), MAX_FUNCTION_LINES)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_every_module_has_a_docstring_with_a_first_line() -> None:
    offenders = []
    for path in modules(*PACKAGES):
        docstring = ast.get_docstring(parsed(path), clean=False)
        if docstring is None or not docstring.split("\n", 1)[0].strip():
            offenders.append(where(path))
    assert not offenders, (
        "modules without a docstring whose first line says what they are:\n" + "\n".join(offenders)
    )


def environment_reads(tree: ast.AST) -> list[ast.AST]:
    """``os.environ``, ``environ``, ``os.getenv(...)``, ``getenv``: by name or attribute."""
    return [
        node
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_READS)
        or (isinstance(node, ast.Name) and node.id in ENVIRONMENT_READS)
        or (
            isinstance(node, ast.ImportFrom)
            and any(alias.name in ENVIRONMENT_READS for alias in node.names)
        )
    ]


def test_the_core_reads_no_environment() -> None:
    offenders = [
        f"{where(path)}:{getattr(node, 'lineno', '?')}"
        for path in modules("server/core")
        for node in environment_reads(parsed(path))
    ]
    assert not offenders, "server/core/ must take settings, not read them:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("source", "reads"),
    [
        ("import os\nx = os.environ['A']", 1),
        ("import os\nx = os.getenv('A')", 1),
        ("from os import environ\nx = environ.get('A')", 2),
        ("from os import getenv as g", 1),
        ("def f(env):\n    return env.get('A')", 0),
    ],
)
def test_the_environment_scan_sees_the_usual_spellings(source: str, reads: int) -> None:
    assert len(environment_reads(ast.parse(source))) == reads
