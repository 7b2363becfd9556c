"""Bad input to either backend: one `error: ...` line, exit 1, nothing changed.

Each case checks the message and that deployments, refs, boot entries and the
images in bootc's storage are exactly as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OCI_MANIFEST, OciLayout
from tests.backend_support import Published, bootc, install, ok, one_error_line, publish, state
from tests.support import Registry, free_port
from tests.sysroot_support import commit_bootable_tree

pytestmark = pytest.mark.registry


@pytest.fixture(params=["ostree", "container"])
def installed(registry: Registry, target: Path, tmp_path: Path, request: Any) -> Path:
    """A sysroot installed with each backend in turn: both refuse alike."""
    image = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/bad-base")
    ok(install(target, image.docker, backend=request.param))
    return target


def refused_switch(sysroot: Path, image: str, fragment: str) -> None:
    before = state(sysroot)
    line = one_error_line(bootc("switch", image, sysroot=sysroot))
    assert fragment in line, line
    assert state(sysroot) == before


def test_image_that_does_not_exist(installed: Path, registry: Registry) -> None:
    refused_switch(installed, f"docker://{registry.address}/pybootc/nosuch:v1", "manifest unknown")


def test_tag_that_does_not_exist(installed: Path, registry: Registry) -> None:
    refused_switch(
        installed, f"docker://{registry.address}/pybootc/bad-base:nosuchtag", "manifest unknown"
    )


def test_registry_that_does_not_answer(installed: Path) -> None:
    refused_switch(
        installed, f"docker://127.0.0.1:{free_port()}/pybootc/x:v1", "connection refused"
    )


@pytest.mark.parametrize(
    "reference", ["docker:/no-slashes", "nosuchtransport:thing", "docker://UPPER/Case"]
)
def test_malformed_image_reference(installed: Path, reference: str) -> None:
    refused_switch(installed, reference, "Invalid image reference")


def test_image_with_no_kernel(installed: Path, registry: Registry, tmp_path: Path) -> None:
    image = publish(registry, tmp_path, sample_image("2.0", kernel=False), repo="pybootc/nokernel")
    refused_switch(installed, image.docker, "not bootable")


def test_image_for_another_architecture(
    installed: Path, registry: Registry, tmp_path: Path
) -> None:
    image = publish(
        registry, tmp_path, sample_image("2.0", architecture="arm64"), repo="pybootc/arm"
    )
    refused_switch(installed, image.docker, "Image has architecture arm64; expected amd64")


def test_manifest_that_is_not_json(installed: Path, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "broken")
    garbage = b"this is no manifest {"
    entry = {
        "mediaType": OCI_MANIFEST,
        "digest": layout.put_blob(garbage),
        "size": len(garbage),
        "annotations": {"org.opencontainers.image.ref.name": "os"},
    }
    index = json.loads((layout.path / "index.json").read_text())
    index["manifests"] = [entry]
    (layout.path / "index.json").write_text(json.dumps(index))
    refused_switch(installed, layout.ref("os"), "invalid character 'h' in literal true")


def test_sysroot_that_is_not_a_sysroot(tmp_path: Path, registry: Registry) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file").write_text("mine")
    # `status` there says "System is not deployed via bootc." (test_cli.py), as upstream.
    for args in (
        ("switch", f"docker://{registry.address}/x:y"),
        ("upgrade",),
        ("rollback",),
    ):
        line = one_error_line(bootc(*args, sysroot=plain))
        assert "is not an OSTree sysroot" in line
    assert sorted(p.name for p in plain.iterdir()) == ["file"]


def test_install_into_a_non_empty_directory(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    image: Published = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/nonempty")
    (target / "precious").write_text("keep me")
    proc = install(target, image.docker)
    assert "is not empty" in one_error_line(proc)
    assert sorted(p.name for p in target.iterdir()) == ["precious"]
    assert (target / "precious").read_text() == "keep me"


def test_install_of_an_image_with_no_kernel_leaves_the_directory_empty(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    image = publish(
        registry, tmp_path, sample_image("1.0", kernel=False), repo="pybootc/nokernel-install"
    )
    proc = install(target, image.docker)
    assert "not bootable" in one_error_line(proc)
    assert list(target.iterdir()) == []


def test_install_with_a_stateroot_that_is_no_name(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    image = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/stateroot")
    for name in ("a/b", "..", ""):
        line = one_error_line(install(target, image.docker, "--stateroot", name))
        assert line.endswith(f"Invalid stateroot name: {name!r}"), line
        assert list(target.iterdir()) == []


def test_rollback_with_a_single_deployment(installed: Path) -> None:
    before = state(installed)
    assert "No rollback available" in one_error_line(bootc("rollback", sysroot=installed))
    assert state(installed) == before


def test_rollback_to_a_deployment_that_is_no_image(installed: Path, tmp_path: Path) -> None:
    sysroot = Sysroot.open(installed)
    plain = commit_bootable_tree(sysroot.repo, tmp_path, "plain")
    sysroot.deploy(plain, stateroot="default", origin={"origin": {"refspec": "plain"}})
    sysroot.rollback()  # the image first again, the plain commit its rollback
    assert [d.checksum for d in sysroot.deployments()][1] == plain
    before = state(installed)
    line = one_error_line(bootc("rollback", sysroot=installed))
    assert line == "error: Rollback is not container image based", line
    assert state(installed) == before
