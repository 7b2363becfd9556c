"""Disk space: an image that cannot fit is refused before anything is fetched, and one
that runs out of space mid-way is one error that leaves the sysroot as it was."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import (
    ImageSpec,
    OciLayout,
    compress,
    file,
    layer,
    sha256_digest,
    write_tar,
)
from tests.backend_support import empty_sysroot_dir, install, ok, one_error_line, state, switch_oci

BACKENDS = ["ostree", "container"]


def huge_claim(layout: OciLayout, tag: str) -> None:
    """An image whose manifest claims one 999 TiB layer: its blob never exists."""
    base = sample_image("1.0")
    descriptors = []
    diff_ids = []
    for lay in base.layers:
        raw = write_tar(lay)
        blob = compress(raw, lay.compression)
        diff_ids.append(sha256_digest(raw))
        descriptors.append(
            {
                "mediaType": lay.compression.media_type,
                "digest": layout.put_blob(blob),
                "size": len(blob),
            }
        )
    descriptors.append(
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256_digest(b"never written"),
            "size": 999 * 2**40,
        }
    )
    diff_ids.append(sha256_digest(b"never written either"))
    layout.add_manifest(tag, ImageSpec(base.layers, labels=base.labels), descriptors, diff_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_that_cannot_fit_is_refused_before_any_fetch(
    target: Path, tmp_path: Path, backend: str
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    huge_claim(layout, "huge")
    ok(install(target, layout.ref("v1"), backend=backend))
    before = state(target)
    line = one_error_line(switch_oci(target, layout, "huge"))
    assert line.startswith(f"error: Insufficient free space for {layout.path}:huge (available: ")
    # GLib's format_size, as upstream's message has it, puts a no-break space before the unit.
    assert line.endswith(" required: 1.1\xa0PB)"), line
    assert state(target) == before


@pytest.fixture
def small_target(tmp_path: Path) -> Iterator[Path]:
    """An empty sysroot directory on a 96 MiB tmpfs."""
    with empty_sysroot_dir(tmp_path / "small", size="96m") as path:
        yield path


def leftovers(target: Path) -> list[str]:
    tmp = target / "ostree/repo/tmp"
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("pybootc-"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_out_of_space_mid_way_is_one_error_and_loses_nothing(
    small_target: Path, tmp_path: Path, backend: str
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    # 160 MiB of one short pattern: little to fetch, more than the filesystem holds.
    big = layer(file("usr/share/big", b"0123456789abcdef" * (10 << 20)))
    layout.add_image("big", sample_image("2.0", extra=(big,)))
    ok(install(small_target, layout.ref("v1"), backend=backend))
    before = state(small_target)
    used_before = _used(small_target)
    line = one_error_line(switch_oci(small_target, layout, "big"))
    assert "no space left on device" in line.lower(), line
    assert state(small_target) == before
    assert leftovers(small_target) == []
    # What the failed pull wrote is gone again (within what libostree keeps in caches).
    assert _used(small_target) - used_before < 8 << 20
    # And the sysroot still takes an update that fits.
    layout.add_image("v2", sample_image("2.0"))
    ok(switch_oci(small_target, layout, "v2"))


def _used(path: Path) -> int:
    fs = os.statvfs(path)
    return (fs.f_blocks - fs.f_bfree) * fs.f_frsize
