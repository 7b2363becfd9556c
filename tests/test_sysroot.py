"""A sysroot that is not the running system, through real libostree in a scratch tmpfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.ostree.gi import OSTree
from pybootc.ostree.repo import CommitInfo, commit_directory, list_refs, prune_marker, set_ref
from pybootc.ostree.sysroot import (
    DeploymentInfo,
    Sysroot,
    boot_roles,
    initialize,
)
from tests.sysroot_support import (
    commit_bootable_tree,
    lock_held_elsewhere,
    scratch_tmpfs,
    snapshot,
    unreachable_objects,
    write_bootable_tree,
)

STATEROOT = "test"
ORIGIN = {
    "origin": {"container-image-reference": "ostree-unverified-registry:quay.io/x/os:1"},
    "pybootc": {"backend": "container"},
}


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_tmpfs(tmp_path / "fs") as where:
        yield where


@pytest.fixture
def sysroot(scratch: Path) -> Sysroot:
    path = scratch / "sysroot"
    path.mkdir()
    initialize(path, STATEROOT)
    return Sysroot.open(path)


def origin_for(tag: str) -> dict[str, dict[str, str]]:
    return {
        "origin": {"container-image-reference": f"ostree-unverified-registry:quay.io/x/os:{tag}"},
        "pybootc": {"backend": "container"},
    }


def bls_entries(sysroot: Sysroot) -> dict[str, dict[str, str]]:
    """boot/loader/entries/*.conf as {file name: {key: value}}."""
    entries = {}
    for conf in sorted((sysroot.path / "boot/loader/entries").glob("*.conf")):
        pairs = (line.split(" ", 1) for line in conf.read_text().splitlines() if line)
        entries[conf.name] = {key: value for key, value in pairs}
    return entries


def default_entry(sysroot: Sysroot) -> dict[str, str]:
    """The entry that boots by default: libostree numbers the first deployment highest.
    (Its file is ostree-N-STATEROOT.conf up to libostree 2024.4, ostree-N.conf since.)"""
    entries = bls_entries(sysroot)
    highest = max(entries, key=lambda name: int(name.split("-")[1].removesuffix(".conf")))
    assert highest in (f"ostree-{len(entries)}-{STATEROOT}.conf", f"ostree-{len(entries)}.conf")
    return entries[highest]


def test_initialize_makes_a_bare_repo_and_the_stateroot(scratch: Path) -> None:
    path = scratch / "sysroot"
    path.mkdir()
    initialize(path, STATEROOT)
    sysroot = Sysroot.open(path)
    assert sysroot.repo.get_mode() == OSTree.RepoMode.BARE
    assert (path / "boot").is_dir()
    # The stateroot. What is in its /var is libostree's to make (2022.7 makes tmp and
    # a run symlink here; since 2024.x only a deployment with no tmpfiles.d gets them).
    assert (path / "ostree/deploy/test/var").is_dir()
    config = sysroot.repo.copy_config()
    assert config.get_string("sysroot", "bootloader") == "none"
    # As upstream's install: ostree-prepare-root mounts /sysroot read-only.
    assert config.get_string("sysroot", "readonly") == "true"
    assert sysroot.deployments() == []
    assert not sysroot.booted


def test_initialize_refuses_an_existing_sysroot_and_changes_nothing(sysroot: Sysroot) -> None:
    before = snapshot(sysroot.path)
    with pytest.raises(BootcError, match="already holds an OSTree sysroot"):
        initialize(sysroot.path, "other")
    assert snapshot(sysroot.path) == before


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_initialize_refuses_a_bad_stateroot_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(BootcError, match="Invalid stateroot name"):
        initialize(tmp_path, name)
    assert snapshot(tmp_path) == [("", tmp_path.stat().st_mode, 0)]


@pytest.mark.parametrize("contents", [{}, {"etc/hostname": b"box\n", "ostree/other": b"x"}])
def test_open_of_a_non_sysroot_is_an_error_and_creates_nothing(
    tmp_path: Path, contents: dict[str, bytes]
) -> None:
    for relpath, data in contents.items():
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_bytes(data)
    before = snapshot(tmp_path)
    with pytest.raises(BootcError, match=rf"^{tmp_path} is not an OSTree sysroot"):
        Sysroot.open(tmp_path)
    assert snapshot(tmp_path) == before


def test_open_of_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BootcError, match="is not an OSTree sysroot"):
        Sysroot.open(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_deploy_puts_the_new_deployment_first_and_keeps_the_previous_as_rollback(
    sysroot: Sysroot, scratch: Path
) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    two = commit_bootable_tree(sysroot.repo, scratch, "2")

    first = sysroot.deploy(one, stateroot=STATEROOT, origin=origin_for("1"))
    assert (first.index, first.checksum, first.deploy_serial) == (0, one, 0)
    second = sysroot.deploy(two, stateroot=STATEROOT, origin=origin_for("2"))

    deployments = sysroot.deployments()
    assert [(d.index, d.checksum) for d in deployments] == [(0, two), (1, one)]
    assert deployments[0] == second
    assert [d.origin for d in deployments] == [origin_for("2"), origin_for("1")]
    for d in deployments:
        assert d.stateroot == STATEROOT
        assert not (d.pinned or d.is_booted or d.is_staged)
        assert d.deployment_path == sysroot.path / f"ostree/deploy/test/deploy/{d.checksum}.0"
        assert (d.deployment_path / "etc/os-release").is_file()
    assert default_entry(sysroot)["title"].startswith("Test OS 2")


def test_deploying_the_same_commit_again_gets_the_next_serial(
    sysroot: Sysroot, scratch: Path
) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN)
    again = sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN)
    assert [(d.checksum, d.deploy_serial) for d in sysroot.deployments()] == [(one, 1), (one, 0)]
    assert again.deployment_path.name == f"{one}.1"


def test_origin_round_trips_through_a_reopened_sysroot(sysroot: Sysroot, scratch: Path) -> None:
    origin = {
        "origin": {"container-image-reference": "ostree-image-signed:docker://q.io/a b:c=d"},
        "pybootc": {"backend": "ostree", "note": "line one\nline two"},
    }
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    sysroot.deploy(one, stateroot=STATEROOT, origin=origin)
    assert Sysroot.open(sysroot.path).deployments()[0].origin == origin


def test_set_origin_replaces_a_deployments_origin(sysroot: Sysroot, scratch: Path) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN)
    sysroot.set_origin(0, origin_for("new"))
    assert Sysroot.open(sysroot.path).deployments()[0].origin == origin_for("new")


def test_kernel_arguments_are_set_then_inherited_then_replaced(
    sysroot: Sysroot, scratch: Path
) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    two = commit_bootable_tree(sysroot.repo, scratch, "2")

    sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN, kargs=["root=UUID=abc", "rw"])
    options = default_entry(sysroot)["options"].split()
    assert options[:2] == ["root=UUID=abc", "rw"]
    assert any(o.startswith("ostree=/ostree/boot.") for o in options)

    inherited = sysroot.deploy(two, stateroot=STATEROOT, origin=ORIGIN)
    assert default_entry(sysroot)["options"].split()[:2] == ["root=UUID=abc", "rw"]
    assert inherited.kargs[:2] == ("root=UUID=abc", "rw")

    sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN, kargs=["console=ttyS0"])
    options = default_entry(sysroot)["options"].split()
    assert "console=ttyS0" in options
    assert "root=UUID=abc" not in options


def test_deploy_merges_local_etc_changes_from_the_current_deployment(
    sysroot: Sysroot, scratch: Path
) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    two = commit_bootable_tree(sysroot.repo, scratch, "2")
    first = sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN)
    (first.deployment_path / "etc/local.conf").write_text("mine\n")
    (first.deployment_path / "etc/motd").write_text("edited\n")

    second = sysroot.deploy(two, stateroot=STATEROOT, origin=ORIGIN)
    assert (second.deployment_path / "etc/local.conf").read_text() == "mine\n"
    assert (second.deployment_path / "etc/motd").read_text() == "edited\n"
    assert (second.deployment_path / "etc/os-release").read_bytes() == (
        second.deployment_path / "usr/etc/os-release"
    ).read_bytes()


def test_without_retain_only_the_new_and_the_previous_first_deployment_stay(
    sysroot: Sysroot, scratch: Path
) -> None:
    commits = [commit_bootable_tree(sysroot.repo, scratch, str(n)) for n in range(4)]
    for checksum in commits[:3]:
        sysroot.deploy(checksum, stateroot=STATEROOT, origin=ORIGIN)
    assert [d.checksum for d in sysroot.deployments()] == commits[2::-1]

    sysroot.deploy(commits[3], stateroot=STATEROOT, origin=ORIGIN, retain_others=False)
    assert [d.checksum for d in sysroot.deployments()] == [commits[3], commits[2]]
    assert len(bls_entries(sysroot)) == 2
    kept = sorted(p.name for p in (sysroot.path / "ostree/deploy/test/deploy").glob("*.0"))
    assert kept == sorted(f"{c}.0" for c in commits[2:])


def test_rollback_swaps_the_first_two_and_twice_restores(sysroot: Sysroot, scratch: Path) -> None:
    commits = [commit_bootable_tree(sysroot.repo, scratch, str(n)) for n in range(3)]
    for checksum in commits:
        sysroot.deploy(checksum, stateroot=STATEROOT, origin=origin_for(checksum[:8]))
    before = [(d.checksum, d.origin) for d in sysroot.deployments()]

    sysroot.rollback()
    after = [(d.checksum, d.origin) for d in sysroot.deployments()]
    assert after == [before[1], before[0], before[2]]
    assert default_entry(sysroot)["title"].startswith("Test OS 1")
    assert [d.index for d in sysroot.deployments()] == [0, 1, 2]

    sysroot.rollback()
    assert [(d.checksum, d.origin) for d in sysroot.deployments()] == before
    assert default_entry(sysroot)["title"].startswith("Test OS 2")


def test_rollback_stays_in_the_running_stateroot(sysroot: Sysroot, scratch: Path) -> None:
    subprocess.run(["ostree", "admin", "os-init", f"--sysroot={sysroot.path}", "other"], check=True)
    a, x, b = (commit_bootable_tree(sysroot.repo, scratch, name) for name in ("a", "x", "b"))
    for checksum, stateroot in ((a, STATEROOT), (x, "other"), (b, STATEROOT)):
        sysroot.deploy(checksum, stateroot=stateroot, origin=origin_for(checksum[:8]))
    assert [d.checksum for d in sysroot.deployments()] == [b, x, a]
    roles = boot_roles(sysroot.deployments())
    assert roles.running and roles.rollback
    assert (roles.running.checksum, roles.rollback.checksum) == (b, a)
    assert [d.checksum for d in roles.other] == [x]

    sysroot.rollback()

    # As upstream: the rollback and the running one first, then the rest.
    assert [d.checksum for d in sysroot.deployments()] == [a, b, x]


def _deployment(
    index: int, stateroot: str, *, booted: bool = False, staged: bool = False
) -> DeploymentInfo:
    return DeploymentInfo(
        index=index,
        checksum=f"{index:064x}",
        deploy_serial=0,
        stateroot=stateroot,
        origin={},
        pinned=False,
        is_booted=booted,
        is_staged=staged,
        deployment_path=Path("/nowhere"),
    )


def test_boot_roles_are_upstreams() -> None:
    staged, booted, foreign, older = (
        _deployment(0, "a", staged=True),
        _deployment(1, "a", booted=True),
        _deployment(2, "b"),
        _deployment(3, "a"),
    )
    roles = boot_roles([staged, booted, foreign, older])
    assert (roles.running, roles.staged, roles.rollback) == (booted, staged, older)
    assert roles.other == (foreign,)
    assert not roles.rollback_queued
    # Another stateroot's deployment first in boot order is no queued rollback.
    foreign, booted, older = (
        _deployment(0, "b"),
        _deployment(1, "a", booted=True),
        _deployment(2, "a"),
    )
    roles = boot_roles([foreign, booted, older])
    assert (roles.rollback, roles.other, roles.rollback_queued) == (older, (foreign,), False)
    # The rollback before the booted one is.
    older, booted = _deployment(0, "a"), _deployment(1, "a", booted=True)
    assert boot_roles([older, booted]).rollback_queued
    assert boot_roles([]).running is None


def test_rollback_without_a_second_deployment_is_refused(sysroot: Sysroot, scratch: Path) -> None:
    with pytest.raises(BootcError, match=r"^No rollback available$"):
        sysroot.rollback()
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN)
    before = snapshot(sysroot.path)
    with pytest.raises(BootcError, match=r"^No rollback available$"):
        sysroot.rollback()
    assert snapshot(sysroot.path) == before


def test_deploy_of_an_unknown_commit_fails_and_changes_no_deployment(
    sysroot: Sysroot, scratch: Path
) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    sysroot.deploy(one, stateroot=STATEROOT, origin=ORIGIN)
    before = sysroot.deployments()
    missing = "0" * 64
    with pytest.raises(BootcError, match=f"^Deploying {missing}: .*No such metadata object"):
        sysroot.deploy(missing, stateroot=STATEROOT, origin=ORIGIN)
    assert Sysroot.open(sysroot.path).deployments() == before


def test_deploy_into_a_missing_stateroot_is_refused(sysroot: Sysroot, scratch: Path) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    with pytest.raises(BootcError, match="has no stateroot other"):
        sysroot.deploy(one, stateroot="other", origin=ORIGIN)
    assert sysroot.deployments() == []


def test_deploy_of_a_tree_without_kernel_says_so(sysroot: Sysroot, scratch: Path) -> None:
    tree = scratch / "nokernel"
    (tree / "usr/etc").mkdir(parents=True)
    checksum = commit_directory(
        sysroot.repo, tree, info=CommitInfo("x", {}, 0), selinux_policy=None
    )
    with pytest.raises(BootcError, match="Failed to find kernel"):
        sysroot.deploy(checksum, stateroot=STATEROOT, origin=ORIGIN)
    assert sysroot.deployments() == []


def test_cleanup_prunes_unreferenced_commits_but_keeps_deployed_ones(
    sysroot: Sysroot, scratch: Path
) -> None:
    deployed = [commit_bootable_tree(sysroot.repo, scratch, str(n)) for n in range(3)]
    for checksum in deployed:
        sysroot.deploy(checksum, stateroot=STATEROOT, origin=ORIGIN)
    referenced = commit_bootable_tree(sysroot.repo, scratch, "kept-by-ref")
    set_ref(sysroot.repo, "ostree/container/image/kept", referenced)
    loose = commit_bootable_tree(sysroot.repo, scratch, "loose", {"usr/share/big": b"x" * 4096})
    sysroot.deploy(deployed[0], stateroot=STATEROOT, origin=ORIGIN, retain_others=False)

    result = sysroot.cleanup()

    assert result.objects_pruned > 0
    assert result.bytes_freed >= 4096
    # The deployments that were dropped no longer hold their commits.
    remaining = {d.checksum for d in sysroot.deployments()}
    assert remaining == {deployed[0], deployed[2]}
    for checksum in [*remaining, referenced]:
        assert sysroot.repo.load_commit(checksum)[0]
    for checksum in (loose, deployed[1]):
        with pytest.raises(Exception, match="No such metadata object"):
            sysroot.repo.load_commit(checksum)
    deployment_refs = list_refs(sysroot.repo, "ostree")
    assert set(deployment_refs.values()) >= remaining
    # What is left still boots: a second cleanup finds nothing more to do.
    assert sysroot.cleanup().objects_pruned == 0
    for d in sysroot.deployments():
        assert (d.deployment_path / "usr/lib/os-release").is_file()


def test_a_prune_killed_half_way_is_finished_by_the_next_cleanup(
    sysroot: Sysroot, scratch: Path
) -> None:
    kept = commit_bootable_tree(sysroot.repo, scratch, "kept")
    sysroot.deploy(kept, stateroot=STATEROOT, origin=ORIGIN)
    assert sysroot.cleanup().objects_pruned == 0
    # What a kill after the commits went and before the prune did leaves: the
    # unreachable trees and files, and the marker the cleanup wrote first.
    gone = commit_bootable_tree(sysroot.repo, scratch, "gone", {"usr/share/big": b"y" * 4096})
    sysroot.repo.delete_object(OSTree.ObjectType.COMMIT, gone, None)
    orphans = unreachable_objects(sysroot.path / "ostree/repo")
    assert orphans > 0
    # With no commit unreachable and no marker, the cleanup does not walk the repo.
    assert sysroot.cleanup().objects_pruned == 0
    assert unreachable_objects(sysroot.path / "ostree/repo") == orphans
    marker = prune_marker(sysroot.repo)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    assert (sysroot.path / "ostree/bootc/prune-pending").exists()

    result = sysroot.cleanup()

    assert result.objects_pruned == orphans
    assert result.bytes_freed >= 4096
    assert unreachable_objects(sysroot.path / "ostree/repo") == 0
    assert not marker.exists()
    assert sysroot.repo.load_commit(kept)[0]


def test_a_sysroot_locked_by_another_process_is_waited_for(
    sysroot: Sysroot, scratch: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    one = commit_bootable_tree(sysroot.repo, scratch, "1")
    with lock_held_elsewhere(sysroot.path):
        deploying = threading.Thread(
            target=sysroot.deploy, args=(one,), kwargs={"stateroot": STATEROOT, "origin": ORIGIN}
        )
        deploying.start()
        # It says why it waits, and writes nothing while the other process holds the lock.
        deadline = time.monotonic() + 30
        waited = ""
        # The whole line: print() may write the text and its newline apart.
        while "Waiting for sysroot lock...\n" not in waited and time.monotonic() < deadline:
            waited += capfd.readouterr().err
            time.sleep(0.05)
        assert waited == "Waiting for sysroot lock...\n"
        assert Sysroot.open(sysroot.path).deployments() == []
    deploying.join(30)
    assert [d.checksum for d in sysroot.deployments()] == [one]


def test_the_lock_nests_within_one_sysroot(sysroot: Sysroot) -> None:
    with sysroot.lock(), sysroot.lock():
        pass
    with Sysroot.open(sysroot.path).lock():
        pass


def test_a_labelled_commit_deploys_with_its_labels(sysroot: Sysroot, scratch: Path) -> None:
    tree = write_bootable_tree(scratch / "tree", "1", {"usr/bin/bash": b"bash"})
    shutil.copytree("/etc/selinux", tree / "usr/etc/selinux", symlinks=True)
    checksum = commit_directory(
        sysroot.repo, tree, info=CommitInfo("1", {}, 0), selinux_policy=tree
    )
    deployed = sysroot.deploy(checksum, stateroot=STATEROOT, origin=ORIGIN)
    label = os.getxattr(deployed.deployment_path / "usr/bin/bash", "security.selinux")
    assert label == b"system_u:object_r:shell_exec_t:s0\0"


def test_a_sysroot_other_than_root_is_never_booted(
    sysroot: Sysroot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "ostree-booted"
    flag.touch()
    monkeypatch.setattr("pybootc.ostree.sysroot.OSTREE_BOOTED", flag)
    assert not sysroot.booted
