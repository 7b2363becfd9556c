"""`bootc internals flatten`: both sources end to end, and every bad input refused cleanly."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from pybootc.layers.listing import diff_listings, list_tree
from pybootc.sample.ocibuild import (
    ImageSpec,
    OciLayout,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    push,
    sha256_digest,
    whiteout,
    write_tar,
)
from tests.support import Registry

SAMPLE = ImageSpec(
    (
        layer(
            directory("etc"),
            file("etc/os-release", "ID=sample\n"),
            directory("usr"),
            file("usr/a", "a"),
        ),
        layer(whiteout("usr/a"), file("etc/motd", "hi"), hardlink("etc/motd2", "etc/motd")),
        layer(opaque("etc"), file("etc/os-release", "ID=sample2\n")),
    )
)


def bootc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pybootc", *args], capture_output=True, text=True, check=False
    )


def assert_refused(proc: subprocess.CompletedProcess[str], fragment: str, output: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0]
    assert not output.exists(), "the output directory was left behind"


@pytest.fixture
def layout(tmp_path: Path) -> OciLayout:
    return OciLayout(tmp_path / "oci")


@pytest.mark.parametrize("source", ["blobs", "containers-storage"])
def test_both_sources_from_a_registry_give_the_same_tree(
    registry: Registry, layout: OciLayout, tmp_path: Path, source: str
) -> None:
    layout.add_image("v1", SAMPLE)
    push(layout.ref("v1"), f"docker://{registry.address}/flatten/sample:v1")
    out = tmp_path / "out"
    proc = bootc(
        "internals",
        "flatten",
        "--source",
        source,
        f"docker://{registry.address}/flatten/sample:v1",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Flattened 3 layers: ")
    paths = {e.path for e in list_tree(out)}
    # The opaque /etc of the top layer hides motd; the whiteout takes usr/a.
    assert paths == {"etc", "etc/os-release", "usr"}


def test_docker_v2s2_media_types(registry: Registry, layout: OciLayout, tmp_path: Path) -> None:
    layout.add_image("v1", SAMPLE)
    ref = f"docker://{registry.address}/flatten/docker:v1"
    push(layout.ref("v1"), ref, "--format", "v2s2")
    blobs, storage = tmp_path / "blobs", tmp_path / "storage"
    assert bootc("internals", "flatten", ref, "--output", str(blobs)).returncode == 0
    assert (
        bootc(
            "internals", "flatten", "--source", "containers-storage", ref, "--output", str(storage)
        ).returncode
        == 0
    )
    assert not diff_listings(list_tree(storage), list_tree(blobs))


def _image_with_blob(layout: OciLayout, blob: bytes, diff_id: str, media_type: str) -> str:
    desc = {"mediaType": media_type, "digest": layout.put_blob(blob), "size": len(blob)}
    layout.add_manifest("bad", ImageSpec(()), [desc], [diff_id])
    return layout.ref("bad")


GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def test_corrupt_gzip_stream(layout: OciLayout, tmp_path: Path) -> None:
    blob = gzip.compress(write_tar(layer(file("x", "x" * 4096))))
    corrupt = blob[:20] + bytes(b ^ 0x55 for b in blob[20:60]) + blob[60:]
    ref = _image_with_blob(layout, corrupt, sha256_digest(b"irrelevant"), GZIP)
    out = tmp_path / "out"
    assert_refused(
        bootc("internals", "flatten", ref, "--output", str(out)), "corrupt gzip stream", out
    )


def test_corrupt_zstd_stream(layout: OciLayout, tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor().compress(write_tar(layer(file("x", "x" * 4096))))
    corrupt = blob[:8] + b"\xff" * 24 + blob[32:]
    ref = _image_with_blob(layout, corrupt, sha256_digest(b"irrelevant"), ZSTD)
    out = tmp_path / "out"
    assert_refused(
        bootc("internals", "flatten", ref, "--output", str(out)), "corrupt zstd stream", out
    )


def test_truncated_tar(layout: OciLayout, tmp_path: Path) -> None:
    tar = write_tar(layer(file("x", "x" * 4096), file("y", "y" * 4096)))[:1536]
    ref = _image_with_blob(
        layout, gzip.compress(tar), "sha256:" + hashlib.sha256(tar).hexdigest(), GZIP
    )
    out = tmp_path / "out"
    assert_refused(bootc("internals", "flatten", ref, "--output", str(out)), "truncated", out)


def test_blob_whose_digest_does_not_match_the_manifest(layout: OciLayout, tmp_path: Path) -> None:
    manifest = layout.blob_path(layout.add_image("v1", SAMPLE))

    first = json.loads(manifest.read_bytes())["layers"][0]["digest"]
    path = layout.blob_path(first)
    path.write_bytes(gzip.compress(write_tar(layer(file("evil", "substituted")))))
    out = tmp_path / "out"
    proc = bootc("internals", "flatten", layout.ref("v1"), "--output", str(out))
    assert_refused(proc, "sha256:", out)
    assert (
        "corrupted blob" in proc.stderr
        or "mismatch" in proc.stderr
        or "bytes in blob" in proc.stderr
    )


def test_unknown_layer_media_type(layout: OciLayout, tmp_path: Path) -> None:
    blob = gzip.compress(write_tar(layer(file("x"))))
    ref = _image_with_blob(layout, blob, sha256_digest(b""), "application/vnd.example.layer.v1")
    out = tmp_path / "out"
    assert_refused(
        bootc("internals", "flatten", ref, "--output", str(out)),
        "Unknown layer media type: application/vnd.example.layer.v1",
        out,
    )


def test_invalid_whiteout_name(layout: OciLayout, tmp_path: Path) -> None:
    layout.add_image("v1", ImageSpec((layer(file("x")), layer(file(".wh..")))))
    out = tmp_path / "out"
    assert_refused(
        bootc("internals", "flatten", layout.ref("v1"), "--output", str(out)),
        "Invalid whiteout name",
        out,
    )


@pytest.mark.parametrize("source", ["blobs", "containers-storage"])
def test_image_that_does_not_exist(layout: OciLayout, tmp_path: Path, source: str) -> None:
    layout.add_image("v1", SAMPLE)
    out = tmp_path / "out"
    proc = bootc(
        "internals", "flatten", "--source", source, layout.ref("nosuch"), "--output", str(out)
    )
    assert_refused(proc, "nosuch", out)
    proc = bootc(
        "internals",
        "flatten",
        "--source",
        source,
        f"oci:{tmp_path}/missing:v1",
        "--output",
        str(out),
    )
    assert_refused(proc, "missing", out)


def test_output_that_exists_is_refused_and_kept(layout: OciLayout, tmp_path: Path) -> None:
    layout.add_image("v1", SAMPLE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    proc = bootc("internals", "flatten", layout.ref("v1"), "--output", str(out))
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert (out / "keep").read_text() == "mine"
