"""`bootc status` of real deployments, field by field where upstream's status decides
something: signatures, timestamps, cached updates, rpm-ostree origins, store and type,
and the options that pick the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pybootc.host.model import Host
from pybootc.oci.metadata import metadata_at
from pybootc.ostree.ext_format import cached_update_metadata
from pybootc.ostree.repo import set_detached_metadata
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, install, ok, one_error_line, state
from tests.sysroot_support import commit_bootable_tree

CREATED = "org.opencontainers.image.created"


@pytest.fixture
def layout(tmp_path: Path) -> OciLayout:
    found = OciLayout(tmp_path / "oci")
    found.add_image("v1", sample_image("1.0"))
    found.add_image("bad-date", sample_image("1.0", labels={CREATED: "2024-05-01"}))
    found.add_image("no-date", sample_image("1.0", created=None))
    return found


def installed(target: Path, layout: OciLayout, tag: str = "v1") -> Host:
    ok(install(target, layout.ref(tag), backend="ostree"))
    return status(target)


def status(target: Path) -> Host:
    return Host.from_json(ok(bootc("status", "--format", "json", sysroot=target)))


def test_an_unverified_image_names_no_signature(target: Path, layout: OciLayout) -> None:
    host = installed(target, layout)
    document = json.loads(ok(bootc("status", "--format", "json", sysroot=target)))
    assert document["spec"]["image"] == {"image": f"{layout.path}:v1", "transport": "oci"}
    assert "signature" not in document["status"]["staged"]["image"]["image"]
    assert host.spec.image is not None and host.spec.image.signature is None
    assert "Signature:" not in ok(
        bootc("status", "--format", "humanreadable", "-v", sysroot=target)
    )


def test_a_created_label_that_is_no_date_is_no_timestamp(target: Path, layout: OciLayout) -> None:
    ok(install(target, layout.ref("bad-date"), backend="ostree"))
    shown = bootc("status", "--format", "json", sysroot=target)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.startswith("warning: Invalid timestamp in image: ")
    staged = Host.from_json(shown.stdout).status.staged
    assert staged and staged.image and staged.image.timestamp is None


def test_an_image_that_says_not_when_it_was_made_has_no_timestamp(
    target: Path, layout: OciLayout
) -> None:
    staged = installed(target, layout, "no-date").status.staged
    assert staged and staged.image and staged.image.timestamp is None
    human = ok(bootc("status", "--format", "humanreadable", sysroot=target))
    assert "Version: 1.0\n" in human
    assert "1970" not in human


def test_json_is_upstreams_canonical_form(target: Path, layout: OciLayout) -> None:
    installed(target, layout)
    for argv in (("--format", "json"), ("--json",)):
        out = ok(bootc("status", *argv, sysroot=target))
        assert out == json.dumps(json.loads(out), sort_keys=True, separators=(",", ":"))


def test_format_wins_over_json(target: Path, layout: OciLayout) -> None:
    installed(target, layout)
    out = ok(bootc("status", "--json", "--format", "yaml", sysroot=target))
    assert out.startswith("apiVersion: org.containers.bootc/v1\n")


def test_an_unknown_format_version_is_refused(target: Path, layout: OciLayout) -> None:
    installed(target, layout)
    before = state(target)
    shown = bootc("status", "--format-version", "2", sysroot=target)
    assert one_error_line(shown) == "error: Status: Unsupported format version: 2"
    assert state(target) == before


def test_a_cached_update_of_the_same_image_is_kept_but_not_shown(
    target: Path, layout: OciLayout
) -> None:
    staged = installed(target, layout).status.staged
    assert staged and staged.image and staged.ostree
    sysroot = Sysroot.open(target)
    cached = cached_update_metadata(metadata_at(layout.ref("v1")))
    set_detached_metadata(sysroot.repo, staged.ostree.checksum, cached)
    again = status(target).status.staged
    assert again and again.cached_update
    assert again.cached_update.image_digest == staged.image.image_digest
    human = ok(bootc("status", "--format", "humanreadable", sysroot=target))
    assert "Update" not in human


def test_an_origin_with_rpm_ostree_changes_is_incompatible_and_not_upgraded(
    target: Path, layout: OciLayout
) -> None:
    staged = installed(target, layout).status.staged
    assert staged and staged.ostree
    origin = target / f"ostree/deploy/default/deploy/{staged.ostree.checksum}.0.origin"
    origin.write_text(origin.read_text() + "\n[packages]\nrequested=vim\n")
    again = status(target).status.staged
    assert again and again.incompatible
    assert (again.image, again.cached_update) == (None, None)
    # Nor does bootc upgrade it, which would drop those changes.
    before = state(target)
    for argv in (("upgrade",), ("upgrade", "--check")):
        assert one_error_line(bootc(*argv, sysroot=target)) == (
            "error: Deployment contains local rpm-ostree modifications; cannot upgrade via"
            " bootc. You can run `rpm-ostree reset` to undo the modifications."
        )
        assert state(target) == before


def test_an_origin_naming_an_unknown_backend_is_one_error(target: Path, layout: OciLayout) -> None:
    staged = installed(target, layout).status.staged
    assert staged and staged.ostree
    origin = target / f"ostree/deploy/default/deploy/{staged.ostree.checksum}.0.origin"
    origin.write_text(origin.read_text().replace("backend=ostree", "backend=Container"))
    before = state(target)
    for argv in (("status",), ("upgrade",), ("switch", layout.ref("v1"))):
        line = one_error_line(bootc(*argv, sysroot=target))
        assert line.endswith(
            "Unknown backend 'Container' in [pybootc] (known: ostree, container)"
        ), line
        assert state(target) == before


def test_a_plain_commit_is_an_ostree_container_deployment_but_no_bootc_host(
    target: Path, layout: OciLayout, tmp_path: Path
) -> None:
    installed(target, layout)
    sysroot = Sysroot.open(target)
    plain = commit_bootable_tree(sysroot.repo, tmp_path, "plain")
    sysroot.deploy(plain, stateroot="default", origin={"origin": {"refspec": "plain"}})
    host = status(target)
    assert host.status.staged and host.status.rollback
    assert (host.status.staged.image, host.status.staged.store) == (None, "ostreeContainer")
    # As upstream: the host's type is the running deployment's, here the plain commit.
    assert host.status.type is None
    assert host.status.rollback.image is not None
    # Which names no image to upgrade.
    before = state(target)
    line = one_error_line(bootc("upgrade", sysroot=target))
    assert line == "error: No image source specified"
    assert state(target) == before
