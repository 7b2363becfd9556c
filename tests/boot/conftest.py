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

from tests.boot.guest_image import GuestImages, build_guest_images
from tests.boot.steps import TIMINGS, phase


@pytest.fixture(scope="session", autouse=True)
def _print_timings() -> Iterator[None]:
    yield
    if TIMINGS:
        print("\n[boot phase] summary: " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


@pytest.fixture(scope="session")
def images() -> Iterator[GuestImages]:
    release = os.environ.get("PYBOOTC_BOOT_RELEASE", "bookworm")
    # The layout is this session's own; the base layer in it is a hard link to the cache.
    layout = Path(tempfile.mkdtemp(prefix=f"pybootc-guest-{release}-", dir="/var/tmp"))
    try:
        with phase(f"guest images for {release} (cached base + wheel layer)"):
            images = build_guest_images(release, layout / "layout")
        yield images
    finally:
        shutil.rmtree(layout, ignore_errors=True)


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
