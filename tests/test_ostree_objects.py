"""pybootc's own object writes give the checksums libostree gives the same files, and
never replace an object the repo has."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybootc.errors import BootcError
from pybootc.layers.tree import FileMeta
from pybootc.ostree.gi import Gio, OSTree
from pybootc.ostree.objects import ObjectWriter
from tests.object_support import libostree_checksum, new_bare_repo

pytestmark = pytest.mark.root  # owners and trusted xattrs


@pytest.fixture
def repo(tmp_path: Path) -> OSTree.Repo:
    return new_bare_repo(tmp_path / "repo")


def from_file(writer: ObjectWriter, meta: FileMeta, path: Path) -> str:
    """`path`'s content written through `regular_from_fd`, as a diff directory's is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return writer.regular_from_fd(meta, fd, path.stat().st_size)
    finally:
        os.close(fd)


def meta_of(path: Path) -> FileMeta:
    st_ = path.lstat()
    xattrs = {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in os.listxattr(path, follow_symlinks=False)
    }
    return FileMeta.of(st_.st_uid, st_.st_gid, st_.st_mode, xattrs)


XATTR_NAMES = st.sampled_from(["user.a", "user.zz", "trusted.x", "trusted.b"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=3 << 20),
    shape=st.tuples(
        st.sampled_from([0o644, 0o755, 0o4755, 0o2711, 0o1777, 0o600]),
        st.tuples(st.integers(0, 70000), st.integers(0, 70000)),
        st.dictionaries(XATTR_NAMES, st.binary(min_size=1, max_size=40), max_size=3),
    ),
)
def test_regular_files_get_libostree_s_checksums(
    repo: OSTree.Repo,
    tmp_path: Path,
    data: bytes,
    shape: tuple[int, tuple[int, int], dict[str, bytes]],
) -> None:
    mode, owner, xattrs = shape
    path = tmp_path / "file"
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    for name, value in xattrs.items():
        os.setxattr(path, name, value)
    os.chmod(path, mode)
    meta = meta_of(path)
    writer = ObjectWriter(repo)
    repo.prepare_transaction(None)
    from_bytes = writer.regular_from_bytes(meta, data)
    from_fd = from_file(writer, meta, path)
    repo.commit_transaction(None)
    assert from_bytes == from_fd == libostree_checksum(path)
    # What was written is what libostree reads back as that object.
    _, _stream, info, _ = repo.load_file(from_bytes, None)
    assert (
        info.get_size() == len(data)
        and stat.S_IMODE(info.get_attribute_uint32("unix::mode")) == mode
    )


def test_symlinks_and_directories_get_libostree_s_checksums(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    os.chown(tree / "d", 5, 6)
    os.chmod(tree / "d", 0o2750)
    os.setxattr(tree / "d", "user.tag", b"v")
    (tree / "link").symlink_to("d/nowhere")
    writer = ObjectWriter(repo)
    repo.prepare_transaction(None)
    link = writer.symlink(meta_of(tree / "link"), "d/nowhere")
    dirmeta = writer.dirmeta(meta_of(tree / "d"))
    mtree = OSTree.MutableTree.new()
    repo.write_directory_to_mtree(Gio.File.new_for_path(str(tree)), mtree, None, None)
    repo.commit_transaction(None)
    assert mtree.get_files()["link"] == link
    assert mtree.get_subdirs()["d"].get_metadata_checksum() == dirmeta


def test_one_writer_writes_each_object_whole_whatever_it_wrote_before(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    """A writer keeps what it made for one object (headers, xattrs) for the next: each
    object, large or small, from memory or from an open file (a file over 1 MiB is
    streamed), holds its own bytes and nothing of the one before."""
    writer = ObjectWriter(repo)
    meta = FileMeta.of(0, 0, stat.S_IFREG | 0o644, {})
    sizes = (5 << 20, 10, 0, 600 << 10, 9, 3 << 20, 1, 7, 2 << 20, 4)
    contents = [os.urandom(n) for n in sizes]
    repo.prepare_transaction(None)
    checksums = []
    for index, data in enumerate(contents):
        if index % 2:
            path = tmp_path / f"file{index}"
            path.write_bytes(data)
            checksums.append(from_file(writer, meta, path))
        else:
            checksums.append(writer.regular_from_bytes(meta, data))
    repo.commit_transaction(None)
    for data, checksum in zip(contents, checksums, strict=True):
        obj = tmp_path / "repo/objects" / checksum[:2] / f"{checksum[2:]}.file"
        assert obj.read_bytes() == data
        assert libostree_checksum(obj) == checksum


def test_an_object_the_repo_has_is_never_replaced(repo: OSTree.Repo, tmp_path: Path) -> None:
    """The deployments hardlink the repo's objects: rewriting one must keep its inode."""
    writer = ObjectWriter(repo)
    meta = FileMeta.of(0, 0, stat.S_IFREG | 0o644, {})
    repo.prepare_transaction(None)
    checksum = writer.regular_from_bytes(meta, b"kept")
    repo.commit_transaction(None)
    obj = tmp_path / "repo/objects" / checksum[:2] / f"{checksum[2:]}.file"
    inode = obj.stat().st_ino
    repo.prepare_transaction(None)
    assert writer.regular_from_bytes(meta, b"kept") == checksum
    repo.commit_transaction(None)
    assert obj.stat().st_ino == inode


@pytest.mark.parametrize("size", [4096, 3 << 20], ids=["in-memory", "via-scratch"])
def test_a_rewrite_is_the_same_content_with_the_new_metadata(
    repo: OSTree.Repo, tmp_path: Path, size: int
) -> None:
    """A tar hardlink that changes its file's owner and mode: the content is read back
    from the object (a large one through a scratch file in the repo's tmp)."""
    data = os.urandom(size)
    writer = ObjectWriter(repo)
    repo.prepare_transaction(None)
    first = writer.regular_from_bytes(FileMeta.of(0, 0, stat.S_IFREG | 0o644, {}), data)
    repo.commit_transaction(None)
    repo.prepare_transaction(None)
    relinked = FileMeta.of(1000, 100, stat.S_IFREG | 0o4750, {"user.a": b"b"})
    second = writer.rewrite(first, relinked)
    repo.commit_transaction(None)
    path = tmp_path / "expected"
    path.write_bytes(data)
    os.chown(path, 1000, 100)
    os.setxattr(path, "user.a", b"b")
    os.chmod(path, 0o4750)
    assert second == libostree_checksum(path) != first


class ChangedInBetween(ObjectWriter):
    """An ObjectWriter whose file is written to after it is hashed and before libostree
    reads it: as another writer of a storage's file could."""

    def __init__(self, repo: OSTree.Repo, path: Path) -> None:
        super().__init__(repo)
        self._path = path

    def _write(self, checksum: str, meta: FileMeta, content: Gio.InputStream, size: int) -> None:
        self.written = checksum
        with self._path.open("r+b") as f:
            f.write(b"changed")
        super()._write(checksum, meta, content, size)


def test_a_large_file_that_changes_while_it_is_read_is_refused(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    path = tmp_path / "large"
    path.write_bytes(os.urandom(3 << 20))
    writer = ChangedInBetween(repo, path)
    fd = os.open(path, os.O_RDONLY)
    repo.prepare_transaction(None)
    try:
        with pytest.raises(BootcError, match=r"^A file of 3145728 bytes changed while it was read"):
            writer.regular_from_fd(meta_of(path), fd, 3 << 20)
    finally:
        repo.abort_transaction(None)
        os.close(fd)
    # The next transaction takes the aborted one's staging directory up again, and
    # would move what it staged into the repo: the object of the wrong content is gone.
    repo.prepare_transaction(None)
    repo.commit_transaction(None)
    assert not repo.has_object(OSTree.ObjectType.FILE, writer.written, None)[1]
