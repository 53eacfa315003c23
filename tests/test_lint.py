"""The code stays as STYLE.md asks: ruff-clean and formatted, mypy --strict over the packages
and their tests, and the import rules (``[tool.importlinter]`` in pyproject.toml) kept."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_stable() -> None:
    result = run("ruff", "format", "--check", "server", "node", "showcase", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contracts_name_every_worker_module() -> None:
    """import-linter has no "only node.shared" contract: each worker module is forbidden by
    name, so a new one under node/ must join the lists or server could import it unseen."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    worker = {
        f"node.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "node").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists() and path.name != "shared")
    }
    for contract in config["contracts"]:
        if any(module.startswith("node.") for module in contract["forbidden_modules"]):
            forbidden = set(contract["forbidden_modules"])
            assert forbidden == worker, (contract["name"], sorted(worker ^ forbidden))
