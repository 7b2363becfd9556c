"""SELinux labels from the image's own policy, through the container backend.

An image that carries a policy (the host's selinux-policy-default: config, file
contexts, binary policy) is committed with every path labelled as that policy
says, checked against matchpathcon; with --disable-selinux, or with no policy
in the image, nothing is labelled. One deployment per sysroot: a second deploy
of a labelled image would run the image's semodule, which this one lacks.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from pybootc.ostree.gi import Gio
from pybootc.ostree.sysroot import Sysroot
from pybootc.ostree.xattrs import xattrs_of
from pybootc.sample.image import sample_image
from tests.backend_support import install, ok, publish
from tests.selinux_support import file_contexts, policy_layer
from tests.support import Registry

pytestmark = pytest.mark.registry

LABEL = "security.selinux"
NOFOLLOW = Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS


def commit_labels(sysroot: Path) -> dict[str, tuple[int, str | None]]:
    """Mode and security.selinux label of every path ("/usr/bin/sh") in the commit of
    the sysroot's one deployment, read from the repo through libostree."""
    opened = Sysroot.open(sysroot)
    deployments = opened.deployments()
    assert len(deployments) == 1
    _, root, _ = opened.repo.read_commit(deployments[0].checksum, None)
    found: dict[str, tuple[int, str | None]] = {}
    pending = [("/", root)]
    while pending:
        path, node = pending.pop()
        info = node.query_info("unix::mode", NOFOLLOW, None)
        _, xattrs = node.get_xattrs(None)
        value = dict(xattrs_of(xattrs)).get(LABEL)
        label = None if value is None else value.rstrip(b"\0").decode()
        mode = info.get_attribute_uint32("unix::mode")
        found[path] = (mode, label)
        if stat.S_ISDIR(mode):
            for child in node.enumerate_children("standard::name", NOFOLLOW, None):
                name = child.get_name()
                pending.append((f"{path.rstrip('/')}/{name}", node.get_child(name)))
    return found


def checkout_label(sysroot: Path, path: str) -> str | None:
    """The label the deployed checkout carries at `path` ("/usr/bin/sh")."""
    deployment = Sysroot.open(sysroot).deployments()[0].deployment_path
    try:
        value = os.getxattr(deployment / path.lstrip("/"), LABEL, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.ENODATA:
            return None
        raise
    return value.rstrip(b"\0").decode()


def expected_labels(paths: dict[str, int]) -> dict[str, str]:
    """What the policy's file contexts say for each path of the given mode, per
    matchpathcon (libselinux's own lookup, without libostree)."""
    kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk_file"}
    expected: dict[str, str] = {}
    for kind, name in kinds.items():
        wanted = sorted(p for p, mode in paths.items() if stat.S_IFMT(mode) == kind)
        if not wanted:
            continue
        out = subprocess.run(
            ["matchpathcon", "-m", name, "-f", str(file_contexts()), *wanted],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            path, _, context = line.rpartition("\t")
            expected[path] = context
    return expected


def test_the_images_policy_labels_every_path_it_commits(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    image = publish(
        registry, tmp_path, sample_image("1.0", extra=(policy_layer(),)), repo="pybootc/selinux"
    )
    ok(install(target, image.docker))
    found = commit_labels(target)
    assert "/usr/etc/selinux/config" in found and "/usr/bin/sh" in found
    labels = {path: label for path, (_, label) in found.items()}
    assert all(label and label.startswith("system_u:object_r:") for label in labels.values())
    # Each path as the policy labels it: /usr/etc/x as /usr/etc/x, since libostree 2022.7
    # has no SELINUX_LABEL_V1 (newer ones label it as /etc/x, where it is deployed).
    assert labels == expected_labels({path: mode for path, (mode, _) in found.items()})
    binaries = {path: label for path, label in labels.items() if path.startswith("/usr/bin/")}
    assert binaries["/usr/bin/sh"] == "system_u:object_r:shell_exec_t:s0"
    assert binaries["/usr/bin/ping"] == "system_u:object_r:ping_exec_t:s0"
    for path, label in binaries.items():
        kind = str(label).split(":")[2]
        assert kind == "bin_t" or kind.endswith("_exec_t"), (path, label)
    # The checkout that boots carries them: its files are the repo's objects.
    assert checkout_label(target, "/usr/bin/sh") == "system_u:object_r:shell_exec_t:s0"
    assert checkout_label(target, "/usr/lib/modules") == "system_u:object_r:modules_object_t:s0"


@pytest.mark.parametrize(
    ("with_policy", "options"),
    [(True, ("--disable-selinux",)), (False, ())],
    ids=["disable-selinux", "image-without-policy"],
)
def test_nothing_is_labelled_without_a_policy_to_follow(
    registry: Registry, target: Path, tmp_path: Path, with_policy: bool, options: tuple[str, ...]
) -> None:
    extra = (policy_layer(),) if with_policy else ()
    image = publish(registry, tmp_path, sample_image("1.0", extra=extra), repo="pybootc/nolabel")
    ok(install(target, image.docker, *options))
    found = commit_labels(target)
    assert ("/usr/etc/selinux/config" in found) is with_policy and "/usr/bin/sh" in found
    assert {path: label for path, (_, label) in found.items() if label is not None} == {}
    assert checkout_label(target, "/usr/bin/sh") is None
    # Not checked: the deployment's /etc. libostree copies it from /usr/etc when it
    # deploys, and labels the regular files it copies with the tree's policy if there
    # is one, whatever the commit carries.
