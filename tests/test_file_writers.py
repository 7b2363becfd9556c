"""A diff directory's files are written on two threads into one transaction: each
object whole and under libostree's own checksum, and nothing written once the reading
has ended, however it ended."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.layers.file_writers import FileWriters
from pybootc.layers.tree import FileMeta
from pybootc.ostree.gi import OSTree
from pybootc.ostree.objects import ObjectWriter
from tests.object_support import libostree_checksum, new_bare_repo

pytestmark = pytest.mark.root  # owners as the files have them

META = FileMeta(0, 0, 0o100644)


@pytest.fixture
def repo(tmp_path: Path) -> OSTree.Repo:
    return new_bare_repo(tmp_path / "repo")


class Recording(ObjectWriter):
    """An ObjectWriter that says which thread wrote each file, and when; each write
    takes a little longer, as a large file's would, so both threads get some."""

    def __init__(self, repo: OSTree.Repo, fail_on: str = "") -> None:
        super().__init__(repo)
        self.threads: list[str] = []
        self.finished_at: list[float] = []
        self._fail_on = fail_on

    def regular_from_fd(self, meta: FileMeta, fd: int, size: int) -> str:
        self.threads.append(threading.current_thread().name)
        time.sleep(0.002)
        if self._fail_on and os.pread(fd, size, 0) == self._fail_on.encode():
            raise BootcError(f"Writing {self._fail_on}: no space left on device")
        checksum = super().regular_from_fd(meta, fd, size)
        self.finished_at.append(time.monotonic())
        return checksum


def files(tmp_path: Path, count: int) -> list[Path]:
    made = []
    for i in range(count):
        path = tmp_path / f"f{i}"
        path.write_bytes(f"file {i}".encode() * (1 + i * 997 % 5000))
        made.append(path)
    return made


def test_both_threads_write_and_every_object_is_libostrees(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    paths = files(tmp_path, 200)
    writer = Recording(repo)
    repo.prepare_transaction(None)
    with FileWriters(writer) as writers:
        leaves = [writers.add(str(p), META, p.stat().st_size) for p in paths]
        sources = writers.finish()
    repo.commit_transaction(None)

    assert {"file-writer", threading.current_thread().name} == set(writer.threads)
    assert len(writer.threads) == len(paths)
    expected = [libostree_checksum(p) for p in paths]
    assert [leaf.checksum for leaf in leaves] == expected
    assert sources == tuple((str(p), c) for p, c in zip(paths, expected, strict=True))
    for path, checksum in zip(paths, expected, strict=True):
        _, stream, _, _ = repo.load_file(checksum, None)
        assert stream.read_bytes(1 << 20, None).get_data() == path.read_bytes()


def test_a_failed_write_is_raised_in_the_reader_and_stops_the_writing(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    paths = files(tmp_path, 300)
    # The first file queued: the helper, waiting from the start, takes it.
    bad = paths[0].read_bytes().decode()
    writer = Recording(repo, fail_on=bad)
    repo.prepare_transaction(None)
    with (
        pytest.raises(BootcError, match="no space left on device"),
        FileWriters(writer) as writers,
    ):
        for path in paths:
            writers.add(str(path), META, path.stat().st_size)
        writers.finish()
    left = time.monotonic()
    repo.abort_transaction(None)
    # The failure stopped both threads long before the files after it were done.
    assert len(writer.threads) < 50
    assert all(t <= left for t in writer.finished_at)


def test_nothing_is_written_after_the_reading_fails(repo: OSTree.Repo, tmp_path: Path) -> None:
    paths = files(tmp_path, 300)
    writer = Recording(repo)
    repo.prepare_transaction(None)
    with pytest.raises(BootcError, match="the walk failed"), FileWriters(writer) as writers:
        for path in paths:
            writers.add(str(path), META, path.stat().st_size)
        raise BootcError("the walk failed")
    left = time.monotonic()
    repo.abort_transaction(None)
    assert len(writer.threads) < 50
    assert all(t <= left for t in writer.finished_at)
    time.sleep(0.05)
    assert all(t <= left for t in writer.finished_at)


def test_an_interrupt_on_the_way_out_still_waits_for_the_helper(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    paths = files(tmp_path, 300)
    writer = Recording(repo)
    repo.prepare_transaction(None)
    with pytest.raises(KeyboardInterrupt), FileWriters(writer) as writers:
        for path in paths:
            writers.add(str(path), META, path.stat().st_size)
        join = writers._helper.join
        calls: list[None] = []

        def interrupted_join(timeout: float | None = None) -> None:
            # Ctrl-C again while the way out waits for the helper's write.
            calls.append(None)
            if len(calls) == 1:
                raise KeyboardInterrupt
            join(timeout)

        writers._helper.join = interrupted_join  # type: ignore[method-assign]
        raise KeyboardInterrupt
    left = time.monotonic()
    assert not writers._helper.is_alive()
    repo.abort_transaction(None)
    time.sleep(0.05)
    assert all(t <= left for t in writer.finished_at)
