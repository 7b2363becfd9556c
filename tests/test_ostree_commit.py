"""Commits, refs and metadata in a bare repo, and ostree-ext's ref escaping."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootc.errors import BootcError
from pybootc.ostree.ext_format import image_ref_name, ref_escape, ref_unescape
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.repo import (
    CommitInfo,
    commit_directory,
    commit_timestamp,
    list_refs,
    read_commit_metadata,
    read_detached_metadata,
    resolve_ref,
    root_tree_checksum,
    set_detached_metadata,
    set_ref,
)
from tests.object_support import new_bare_repo
from tests.sysroot_support import write_bootable_tree

SELINUX_POLICY = Path("/etc/selinux/default")


@pytest.fixture
def repo(tmp_path: Path) -> OSTree.Repo:
    return new_bare_repo(tmp_path / "repo")


def commit(
    repo: OSTree.Repo,
    tree: Path,
    *,
    subject: str = "test",
    metadata: dict[str, GLib.Variant] | None = None,
    timestamp: int = 0,
    **kwargs: object,
) -> str:
    info = CommitInfo(subject, metadata or {}, timestamp)
    options: dict[str, object] = {"selinux_policy": None, **kwargs}
    return commit_directory(repo, tree, info=info, **options)  # type: ignore[arg-type]


def committed_file(repo: OSTree.Repo, checksum: str, relpath: str) -> OSTree.RepoFile:
    _, root, _ = repo.read_commit(checksum, None)
    return root.resolve_relative_path(relpath)


def xattrs_of(repo: OSTree.Repo, checksum: str, relpath: str) -> dict[bytes, bytes]:
    """Names and values without the NUL that both carry in ostree's a(ayay)."""
    _, xattrs = committed_file(repo, checksum, relpath).get_xattrs(None)
    pairs = (xattrs.get_child_value(i) for i in range(xattrs.n_children()))
    return {
        pair.get_child_value(0).get_bytestring(): pair.get_child_value(1).get_bytestring()
        for pair in pairs
    }


@pytest.mark.parametrize(
    ("plain", "escaped"),
    [
        ("foo", "foo"),
        ("foo/bar/baz-blah/foo", "foo/bar/baz-blah/foo"),
        ("localhost:5000/foo:latest", "localhost_3A_5000/foo_3A_latest"),
        ("registry:quay.io/coreos/fedora:latest", "registry_3A_quay_2E_io/coreos/fedora_3A_latest"),
        ("docker://quay.io/os:1", "docker_3A__2F__2F_quay_2E_io/os_3A_1"),
        ("oci:/var/lib/img:v_2", "oci_3A__2F_var/lib/img_3A_v__2"),
        ("/", "_2F_"),
        ("blah/", "blah_2F_"),
        ("/foo/", "_2F_foo_2F_"),
        ("a//b", "a/_2F_b"),
        ("a/-b", "a/-b"),
        ("a_b", "a__b"),
        ("é€", "_E9__20AC_"),
    ],
)
def test_ref_escape_matches_ostree_ext(plain: str, escaped: str) -> None:
    assert ref_escape(plain) == escaped
    assert ref_unescape(escaped) == plain


@pytest.mark.parametrize(
    "imgref",
    ["registry:quay.io/exampleos/blah:latest", "oci-archive:/path/to/foo.ociarchive", "/", "x_y"],
)
def test_image_ref_names_are_valid_refs(imgref: str) -> None:
    name = image_ref_name(imgref)
    assert name.startswith("ostree/container/image/")
    assert OSTree.validate_rev(name)


@pytest.mark.parametrize(("bad", "why"), [("", "empty"), ("a\0b", "NUL")])
def test_ref_escape_refuses_what_ostree_ext_refuses(bad: str, why: str) -> None:
    with pytest.raises(BootcError, match=why):
        ref_escape(bad)


@pytest.mark.parametrize("bad", ["a_", "a_ZZ_", "a:b", "_110000_"])
def test_ref_unescape_refuses_malformed_escapes(bad: str) -> None:
    with pytest.raises(BootcError, match="Invalid"):
        ref_unescape(bad)


@given(st.text(st.characters(blacklist_characters="\0"), min_size=1))
def test_ref_escape_round_trips_and_uses_only_ref_characters(plain: str) -> None:
    escaped = ref_escape(plain)
    assert set(escaped) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/")
    assert "//" not in escaped
    assert not escaped.startswith("/")
    assert not escaped.endswith("/")
    assert ref_unescape(escaped) == plain


def test_commit_keeps_content_subject_metadata_and_time(repo: OSTree.Repo, tmp_path: Path) -> None:
    tree = write_bootable_tree(tmp_path / "tree", "1")
    metadata = {
        "version": GLib.Variant("s", "1.0"),
        "ostree.manifest-digest": GLib.Variant("s", "sha256:abc"),
        "blob": GLib.Variant("ay", b"\x00\x01"),
    }
    checksum = commit(repo, tree, subject="image 1", metadata=metadata, timestamp=1_700_000_123)

    assert read_commit_metadata(repo, checksum) == {
        "version": "1.0",
        "ostree.manifest-digest": "sha256:abc",
        "blob": b"\x00\x01",
    }
    assert commit_timestamp(repo, checksum) == 1_700_000_123
    _, variant, _ = repo.load_commit(checksum)
    assert variant.get_child_value(3).get_string() == "image 1"
    sh = committed_file(repo, checksum, "usr/bin/sh")
    assert sh.query_info("unix::mode", 0, None).get_attribute_uint32("unix::mode") == 0o100755
    _, contents, _ = sh.load_contents(None)
    assert contents == b"#!/bin/true\n"
    assert tree.is_dir()


def test_commit_records_its_parent(repo: OSTree.Repo, tmp_path: Path) -> None:
    first = commit(repo, write_bootable_tree(tmp_path / "one", "1"))
    second = commit(repo, write_bootable_tree(tmp_path / "two", "2"), parent=first)
    _, variant, _ = repo.load_commit(second)
    assert OSTree.commit_get_parent(variant) == first


def test_root_tree_checksum_ignores_metadata_and_time_but_not_content(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    tree = write_bootable_tree(tmp_path / "tree", "1")
    one = commit(repo, tree, timestamp=1, metadata={"version": GLib.Variant("s", "a")})
    two = commit(repo, tree, timestamp=2, subject="other", parent=one)
    assert one != two
    assert root_tree_checksum(repo, one) == root_tree_checksum(repo, two)
    (tree / "usr/bin/sh").chmod(0o700)
    assert root_tree_checksum(repo, commit(repo, tree)) != root_tree_checksum(repo, one)


def test_a_failed_commit_leaves_no_transaction_behind(repo: OSTree.Repo, tmp_path: Path) -> None:
    with pytest.raises(BootcError, match=f"^Committing {tmp_path}/missing: "):
        commit(repo, tmp_path / "missing")
    # A transaction left open would make this one fail.
    commit(repo, write_bootable_tree(tmp_path / "tree", "1"))


def test_refs_are_set_listed_resolved_and_deleted(repo: OSTree.Repo, tmp_path: Path) -> None:
    checksum = commit(repo, write_bootable_tree(tmp_path / "tree", "1"))
    image = image_ref_name("registry:quay.io/os:1")
    set_ref(repo, image, checksum)
    set_ref(repo, "ostree/container/blob/sha256_3A_aa", checksum)
    set_ref(repo, "other", checksum)

    assert list_refs(repo, "ostree/container/image") == {image: checksum}
    assert list_refs(repo, "ostree/container/image/") == {image: checksum}
    assert set(list_refs(repo, "ostree/container")) == {image, "ostree/container/blob/sha256_3A_aa"}
    assert list_refs(repo, "ostree/cont") == {}
    assert len(list_refs(repo)) == 3
    assert resolve_ref(repo, image) == checksum

    set_ref(repo, image, None)
    assert list_refs(repo, "ostree/container/image") == {}
    assert resolve_ref(repo, image) is None


def test_an_invalid_ref_name_is_a_bootc_error(repo: OSTree.Repo, tmp_path: Path) -> None:
    checksum = commit(repo, write_bootable_tree(tmp_path / "tree", "1"))
    with pytest.raises(BootcError, match=r"^Setting ref bad ref: Invalid ref name"):
        set_ref(repo, "bad ref", checksum)


def test_detached_metadata_round_trips_and_starts_empty(repo: OSTree.Repo, tmp_path: Path) -> None:
    checksum = commit(repo, write_bootable_tree(tmp_path / "tree", "1"))
    assert read_detached_metadata(repo, checksum) == {}
    cached = {
        "ostree-ext.cached.manifest-digest": GLib.Variant("s", "sha256:new"),
        "ostree-ext.cached.manifest": GLib.Variant("s", '{"schemaVersion":2}'),
        "ostree-ext.cached.config": GLib.Variant("s", "{}"),
    }
    set_detached_metadata(repo, checksum, cached)
    assert read_detached_metadata(repo, checksum) == {
        "ostree-ext.cached.manifest-digest": "sha256:new",
        "ostree-ext.cached.manifest": '{"schemaVersion":2}',
        "ostree-ext.cached.config": "{}",
    }
    set_detached_metadata(repo, checksum, {})
    assert read_detached_metadata(repo, checksum) == {}
    # Detached metadata is not part of the commit: its checksum and metadata stay.
    assert read_commit_metadata(repo, checksum) == {}


def test_reading_a_missing_commit_is_a_bootc_error(repo: OSTree.Repo) -> None:
    with pytest.raises(BootcError, match="No such metadata object"):
        read_commit_metadata(repo, "0" * 64)


def selinux_tree(where: Path) -> Path:
    """A tree that carries Debian's compiled policy in usr/etc/selinux."""
    assert SELINUX_POLICY.is_dir(), "needs Debian's selinux-policy-default installed"
    tree = write_bootable_tree(where, "1", {"usr/bin/bash": b"bash"})
    shutil.copytree(SELINUX_POLICY.parent, tree / "usr/etc/selinux", symlinks=True)
    return tree


def test_selinux_labels_come_from_the_trees_own_policy(repo: OSTree.Repo, tmp_path: Path) -> None:
    tree = selinux_tree(tmp_path / "tree")
    checksum = commit(repo, tree, selinux_policy=tree)
    label = b"security.selinux"
    assert xattrs_of(repo, checksum, "usr/bin/bash")[label] == b"system_u:object_r:shell_exec_t:s0"
    assert xattrs_of(repo, checksum, "usr/etc")[label] == b"system_u:object_r:etc_t:s0"
    unlabelled = commit(repo, tree)
    assert label not in xattrs_of(repo, unlabelled, "usr/bin/bash")


def test_a_disabled_policy_labels_nothing(repo: OSTree.Repo, tmp_path: Path) -> None:
    tree = selinux_tree(tmp_path / "tree")
    config = tree / "usr/etc/selinux/config"
    config.write_text(config.read_text().replace("SELINUX=permissive", "SELINUX=disabled"))
    assert "SELINUX=disabled" in config.read_text()
    checksum = commit(repo, tree, selinux_policy=tree)
    assert b"security.selinux" not in xattrs_of(repo, checksum, "usr/bin/bash")


def test_commit_and_flatten_count_what_they_write(repo: OSTree.Repo, tmp_path: Path) -> None:
    """Progress hears how far a long commit or merge has got: every 512 paths."""
    from pybootc.layers.flatten import flatten_diff_dirs

    layer = tmp_path / "layer"
    (layer / "many").mkdir(parents=True)
    for n in range(1100):
        (layer / "many" / str(n)).write_text(str(n))
    merged: list[int] = []
    flatten_diff_dirs([layer], tmp_path / "merged", counted=merged.append)
    assert merged == [512, 1024]
    committed: list[int] = []
    commit(repo, tmp_path / "merged", counted=committed.append)
    assert committed == [512, 1024]
