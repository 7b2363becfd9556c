"""Fixtures: the loopback registry and the kernel oracle, one of each per worker."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Oracle, running_registry


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    with running_registry() as address:
        yield address


@pytest.fixture(scope="session")
def oracle() -> Iterator[Oracle]:
    found = Oracle(Path(tempfile.mkdtemp(prefix="pybootc-oracle-", dir="/var/tmp")))
    try:
        yield found
    finally:
        found.close()
