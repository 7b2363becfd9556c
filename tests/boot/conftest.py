"""Fixtures of the boot tests: the guest images (built once, cached) and a work dir."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.guest_image import GuestImages
from tests.boot.steps import TIMINGS, guest_images


@pytest.fixture(scope="session", autouse=True)
def _print_timings() -> Iterator[None]:
    yield
    if TIMINGS:
        print("\n[boot phase] summary: " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


@pytest.fixture(scope="session")
def images() -> Iterator[GuestImages]:
    with guest_images(os.environ.get("PYBOOTC_BOOT_RELEASE", "bookworm")) as found:
        yield found


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Disk images and console logs; PYBOOTC_BOOT_KEEP=1 keeps them for a post-mortem."""
    path = Path(tempfile.mkdtemp(prefix="pybootc-boot-test-", dir="/var/tmp"))
    try:
        yield path
    finally:
        if os.environ.get("PYBOOTC_BOOT_KEEP") == "1":
            print(f"[boot] kept {path}", file=sys.stderr)
        else:
            # Only disk image files live here, never a mounted tree: no immutable bits.
            shutil.rmtree(path, ignore_errors=True)
