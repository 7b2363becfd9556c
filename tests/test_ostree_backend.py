"""The ostree backend: layers as commits of their own, fetched only when missing,
and the same tree as the container backend for the same image."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest

from pybootc.ostree.repo import list_refs, read_commit_metadata, root_tree_checksum
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import Entry, Kind, directory, file, layer, symlink
from tests.backend_support import bootc, install, ok, one_error_line, publish, state
from tests.support import ACL_AS_MODE_750, ACL_EXTENDED, Registry, host_schema

pytestmark = pytest.mark.registry

# A capability in the namespaced form (v3) whose root is uid 0: the kernel keeps it as
# the plain form (v2), and so must the tree read from the tar stream.
V3_CAPABILITY = bytes.fromhex("010000030020000000000000000000000000000000000000")
V2_CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
FIFO_LAYER = layer(
    file("srv/readme", "r"),
    Entry("srv/fifo", Kind.FIFO, mode=0o644),
    file("srv/ping", "p", mode=0o755, xattrs={"security.capability": V3_CAPABILITY}),
    # The kernel keeps neither ACL as the header gives it (layers/extract.py).
    file("srv/acl", "a", mode=0o600, xattrs={"system.posix_acl_access": ACL_AS_MODE_750}),
    directory("srv/shared", xattrs={"system.posix_acl_access": ACL_EXTENDED}),
)


def install_ostree(target: Path, image: str) -> str:
    return ok(
        bootc(
            "install", "to-filesystem", "--backend", "ostree",
            "--source-imgref", image, str(target),
        )
    )  # fmt: skip


def tree_of(target: Path) -> str:
    sysroot = Sysroot.open(target)
    return root_tree_checksum(sysroot.repo, sysroot.deployments()[0].checksum)


def deployed_commit(target: Path) -> str:
    return Sysroot.open(target).deployments()[0].checksum


def blob_refs(target: Path) -> set[str]:
    return set(list_refs(Sysroot.open(target).repo, "ostree/container/blob"))


def test_both_backends_commit_the_same_tree(
    registry: Registry, target: Path, tmp_path: Path, other_target: Path
) -> None:
    image = publish(
        registry, tmp_path, sample_image("1.0", extra=(FIFO_LAYER,)), repo="pybootc/same"
    )
    warning = "warning: Skipping /srv/fifo: a device node, FIFO or socket cannot be committed"
    proc = bootc(
        "install", "to-filesystem", "--backend", "ostree", "--source-imgref", image.docker,
        str(target),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert warning in proc.stderr
    proc = install(other_target, image.docker)
    assert proc.returncode == 0 and warning in proc.stderr
    assert tree_of(target) == tree_of(other_target)
    deployed = Sysroot.open(target).deployments()[0].deployment_path
    assert os.getxattr(deployed / "srv/ping", "security.capability") == V2_CAPABILITY
    assert stat.S_IMODE((deployed / "srv/acl").stat().st_mode) == 0o750
    assert "system.posix_acl_access" not in os.listxattr(deployed / "srv/acl")
    assert stat.S_IMODE((deployed / "srv/shared").stat().st_mode) == 0o664
    for sysroot in (target, other_target):
        fsck = subprocess.run(
            ["ostree", "fsck", f"--repo={sysroot}/ostree/repo"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # Not just the tree: the commit, its metadata and timestamp included, is the same.
    assert deployed_commit(target) == deployed_commit(other_target)
    status = json.loads(ok(bootc("status", "--json", sysroot=target)))
    assert status["status"]["staged"]["store"] == "ostreeContainer"
    jsonschema.validate(status, host_schema(with_container_store=False))


def test_an_update_fetches_only_the_layers_that_changed(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    first = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/delta", tag="stable")
    install_ostree(target, first.docker)
    assert len(blob_refs(target)) == 3
    second = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/delta", tag="stable")
    manifest = json.loads(ok(bootc("upgrade", "--check", "--format", "json", sysroot=target)))
    assert manifest["updateAvailable"] is True
    before = len(registry.requests())
    out = ok(bootc("upgrade", sysroot=target))
    assert "Version: 2.0" in out
    fetched = [r for r in registry.requests()[before:] if r.startswith("GET") and "/blobs/" in r]
    new_layer = second.manifest()
    layer_digests = [entry["digest"] for entry in new_layer["layers"]]
    # Only the top layer differs (it carries the version); the others are reused.
    assert [d for d in layer_digests if any(d in r for r in fetched)] == layer_digests[-1:]
    assert len(blob_refs(target)) == 4
    ok(bootc("rollback", sysroot=target))
    ok(bootc("rollback", sysroot=target))


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_switch_to_the_followed_spec_fetches_nothing(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    """As upstream: the spec alone decides, so a newer image under the followed name is
    left to upgrade, and the switch asks the registry nothing."""
    first = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/same", tag="stable")
    ok(install(target, first.docker, backend=backend))
    publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/same", tag="stable")
    before, asked = state(target), len(registry.requests())
    # Upstream's deprecated --no-signature-verification is accepted and does nothing.
    out = ok(bootc("switch", "--no-signature-verification", first.docker, sysroot=target))
    assert out == "Image specification is unchanged.\n"
    assert registry.requests()[asked:] == []
    assert "--no-signature-verification" not in ok(bootc("switch", "--help"))
    assert state(target) == before
    # Another backend is another spec in pybootc's terms: that one is deployed.
    other = "container" if backend == "ostree" else "ostree"
    out = ok(bootc("switch", "--backend", other, first.docker, sysroot=target))
    assert "Version: 2.0" in out


def test_layer_commits_nobody_needs_are_pruned(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    images = [
        publish(
            registry,
            tmp_path,
            sample_image(f"{n}.0", extra=(layer(file(f"only-{n}", str(n))),)),
            repo=f"pybootc/lp{n}",
        )
        for n in (1, 2, 3)
    ]
    install_ostree(target, images[0].docker)
    ok(bootc("switch", images[1].docker, sysroot=target))
    ok(bootc("switch", images[2].docker, sysroot=target))
    # Deployed now: images 2 and 3. Image 1's own top layer is no longer needed.
    sysroot = Sysroot.open(target)
    needed = set()
    for deployment in sysroot.deployments():
        meta = read_commit_metadata(sysroot.repo, deployment.checksum)
        manifest = json.loads(str(meta["ostree.manifest"]))
        needed |= {entry["digest"] for entry in manifest["layers"]}
    digests = {ref.rpartition("/")[2].replace("_3A_", ":") for ref in blob_refs(target)}
    assert digests == needed


def test_switch_between_backends_keeps_the_tree(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    a = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/swb-a")
    b = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/swb-b")
    install_ostree(target, a.docker)
    ok(bootc("switch", "--backend", "container", b.docker, sysroot=target))
    container_tree = tree_of(target)
    status = json.loads(ok(bootc("status", "--json", sysroot=target)))
    assert status["status"]["staged"]["store"] == "containerStorage"
    assert status["status"]["rollback"]["store"] == "ostreeContainer"
    ok(bootc("switch", "--backend", "ostree", b.docker, sysroot=target))
    assert tree_of(target) == container_tree


def test_bad_input_changes_nothing(registry: Registry, target: Path, tmp_path: Path) -> None:
    base = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/obad")
    install_ostree(target, base.docker)
    before = state(target)
    nokernel = publish(registry, tmp_path, sample_image("2.0", kernel=False), repo="pybootc/onok")
    assert "not bootable" in one_error_line(bootc("switch", nokernel.docker, sysroot=target))
    assert state(target) == before
    arm = publish(
        registry, tmp_path, sample_image("2.0", architecture="arm64"), repo="pybootc/oarm"
    )
    line = one_error_line(bootc("switch", arm.docker, sysroot=target))
    assert "Image has architecture arm64; expected amd64" in line
    assert state(target) == before


# An entry whose name or target is not UTF-8 (read with surrogate escapes), and the
# error's words for it.
NOT_UTF8 = {
    "name": (file("srv/a\udcffb", "x"), 'The name "a\\xffb" in srv is not UTF-8'),
    "target": (symlink("srv/link", "a\udcffb"), 'The symlink target "a\\xffb" is not UTF-8'),
}


@pytest.mark.parametrize("backend", ["ostree", "container"])
@pytest.mark.parametrize("case", sorted(NOT_UTF8))
def test_a_name_that_is_not_utf8_is_refused_in_one_line(
    registry: Registry, target: Path, tmp_path: Path, backend: str, case: str
) -> None:
    """OSTree keeps only UTF-8 file names and symlink targets (GVariant strings)."""
    entry, shown = NOT_UTF8[case]
    base = publish(registry, tmp_path, sample_image("1.0"), repo=f"pybootc/utf8-{backend}")
    ok(bootc("install", "to-filesystem", "--backend", backend, "--source-imgref", base.docker,
             str(target)))  # fmt: skip
    before = state(target)
    bad = publish(
        registry,
        tmp_path / "bad",
        sample_image("2.0", extra=(layer(entry),)),
        repo=f"pybootc/utf8-{backend}",
        tag="bad",
    )
    line = one_error_line(bootc("switch", bad.docker, sysroot=target))
    assert shown in line and "Layer sha256:" in line, line
    assert state(target) == before
