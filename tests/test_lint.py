"""The project's own code is ruff and mypy --strict clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.lint


def run(*argv: str) -> None:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check() -> None:
    run(str(BIN / "ruff"), "check", "pybootc", "tests", "bench")


def test_ruff_format() -> None:
    run(str(BIN / "ruff"), "format", "--check", "pybootc", "tests", "bench")


def test_mypy_strict() -> None:
    run(str(BIN / "mypy"), "--strict", "pybootc", "tests", "bench")
