"""A layer blob's files are written by a helper thread while the parser goes on: each
object whole and under libostree's own checksum, written before it is read back,
never more than the bound in memory, and nothing written once the read has ended,
however it ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.layers.tree import FileMeta
from pybootc.ostree import write_behind
from pybootc.ostree.gi import OSTree
from pybootc.ostree.objects import ObjectWriter
from pybootc.ostree.write_behind import _ENTRY_COST, _MAX_QUEUED, WriteBehind
from tests.object_support import libostree_checksum, new_bare_repo

pytestmark = pytest.mark.root  # owners as the files have them

META = FileMeta(0, 0, 0o100644)
OTHER = FileMeta(0, 0, 0o100600)


@pytest.fixture
def repo(tmp_path: Path) -> OSTree.Repo:
    repo = new_bare_repo(tmp_path / "repo")
    repo.prepare_transaction(None)
    return repo


class Recording(ObjectWriter):
    """An ObjectWriter that says which thread wrote each object, and when. Each write
    takes a little longer, so the queue fills; one content can be made to fail, and
    the writes can be held back."""

    def __init__(self, repo: OSTree.Repo, fail_on: bytes = b"") -> None:
        super().__init__(repo)
        self.threads: list[str] = []
        self.finished_at: list[float] = []
        self.go = threading.Event()
        self.go.set()
        self._fail_on = fail_on

    def write_stream(self, checksum: str, parts: tuple[bytes, ...]) -> None:
        self.go.wait()
        self.threads.append(threading.current_thread().name)
        time.sleep(0.001)
        if self._fail_on and parts[-1] == self._fail_on:
            raise BootcError("Writing an object: no space left on device")
        super().write_stream(checksum, parts)
        self.finished_at.append(time.monotonic())


def contents(count: int) -> list[bytes]:
    return [f"file {i}".encode() * (1 + i * 997 % 5000) for i in range(count)]


def read_back(repo: OSTree.Repo, checksum: str) -> bytes:
    _, stream, _, _ = repo.load_file(checksum, None)
    data = b""
    while stream is not None and (chunk := stream.read_bytes(1 << 20, None).get_data()):
        data += chunk
    return data


def queued_while_held(
    writer: Recording, parse: Callable[[], None], queued: list[str], bound: int
) -> int:
    """How many objects `parse` (in a thread of its own, appending each to `queued`)
    got queued while the helper was held back, given the time to reach `bound` and
    then to go past it, if it could; the helper is then let go and the parser ends."""
    parser = threading.Thread(target=parse)
    parser.start()
    try:
        deadline = time.monotonic() + 30
        while len(queued) < bound and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        return len(queued)
    finally:
        writer.go.set()
        parser.join()


def test_the_helper_writes_each_object_under_libostrees_checksum(
    repo: OSTree.Repo, tmp_path: Path
) -> None:
    datas = contents(200)
    writer = Recording(repo)
    with WriteBehind(writer) as behind:
        checksums = [behind.regular_from_bytes(META, data) for data in datas]
    repo.commit_transaction(None)

    assert set(writer.threads) == {"object-writer"}
    assert len(writer.threads) == len(datas)
    for i, (data, checksum) in enumerate(zip(datas, checksums, strict=True)):
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        path.chmod(0o644)
        assert checksum == libostree_checksum(path)
        assert read_back(repo, checksum) == data


def test_a_rewrite_reads_the_object_once_it_is_written(repo: OSTree.Repo) -> None:
    writer = Recording(repo)
    with WriteBehind(writer) as behind:
        for data in contents(50):
            behind.regular_from_bytes(META, data)
        last = behind.regular_from_bytes(META, b"the last file")
        # Queued behind 50 writes: the rewrite must wait for it, not miss it.
        rewritten = behind.rewrite(last, OTHER)
    repo.commit_transaction(None)
    assert read_back(repo, rewritten) == b"the last file"
    _, _, info, _ = repo.load_file(rewritten, None)
    assert info.get_attribute_uint32("unix::mode") == OTHER.mode


def test_no_more_than_the_bound_is_queued(repo: OSTree.Repo) -> None:
    writer = Recording(repo)
    writer.go.clear()  # the helper takes the first object and waits
    mib = [bytes([i]) * (1 << 20) for i in range(40)]
    queued: list[str] = []
    with WriteBehind(writer) as behind:

        def parse() -> None:
            for data in mib:
                queued.append(behind.regular_from_bytes(META, data))

        bound = _MAX_QUEUED // ((1 << 20) + _ENTRY_COST)
        assert queued_while_held(writer, parse, queued, bound) == bound
        # A file over the bound is taken once the queue is empty.
        large = behind.regular_from_bytes(META, b"x" * (_MAX_QUEUED + 1))
    repo.commit_transaction(None)
    assert len(queued) == len(mib)
    assert read_back(repo, large) == b"x" * (_MAX_QUEUED + 1)


def test_a_failed_write_is_raised_in_the_parser_and_the_rest_is_dropped(
    repo: OSTree.Repo,
) -> None:
    datas = contents(300)
    writer = Recording(repo, fail_on=datas[0])
    with pytest.raises(BootcError, match="no space left on device"), WriteBehind(writer) as behind:
        for data in datas:
            behind.regular_from_bytes(META, data)
    left = time.monotonic()
    repo.abort_transaction(None)
    assert len(writer.threads) < 50
    assert all(t <= left for t in writer.finished_at)


def test_a_failed_last_write_is_raised_on_the_way_out(repo: OSTree.Repo) -> None:
    datas = contents(20)
    writer = Recording(repo, fail_on=datas[-1])
    with pytest.raises(BootcError, match="no space left on device"), WriteBehind(writer) as behind:
        for data in datas:
            behind.regular_from_bytes(META, data)
    repo.abort_transaction(None)
    assert len(writer.finished_at) == len(datas) - 1


def test_nothing_is_written_after_the_read_fails(repo: OSTree.Repo) -> None:
    writer = Recording(repo)
    writer.go.clear()  # the helper takes the first object and waits
    with pytest.raises(BootcError, match="the stream failed"), WriteBehind(writer) as behind:
        for data in contents(300):
            behind.regular_from_bytes(META, data)
        threading.Timer(0.1, writer.go.set).start()
        raise BootcError("the stream failed")
    left = time.monotonic()
    repo.abort_transaction(None)
    # At most the object the helper held when the read failed was written.
    assert len(writer.threads) <= 1
    time.sleep(0.05)
    assert all(t <= left for t in writer.finished_at)


def test_empty_files_count_against_the_bound_too(
    repo: OSTree.Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "_MAX_QUEUED", 64 << 10)
    writer = Recording(repo)
    writer.go.clear()  # the helper takes the first object and waits
    queued: list[str] = []
    with WriteBehind(writer) as behind:

        def parse() -> None:
            for i in range(1000):
                queued.append(behind.regular_from_bytes(FileMeta(0, 0, 0o100000 | i), b""))

        bound = (64 << 10) // _ENTRY_COST
        assert queued_while_held(writer, parse, queued, bound) == bound
    repo.commit_transaction(None)
    assert len(set(queued)) == 1000


def test_an_interrupt_on_the_way_out_drops_what_is_queued(repo: OSTree.Repo) -> None:
    writer = Recording(repo)
    writer.go.clear()  # the helper takes the first object and waits
    with pytest.raises(KeyboardInterrupt), WriteBehind(writer) as behind:
        for data in contents(300):
            behind.regular_from_bytes(META, data)
        join = behind._helper.join
        calls: list[None] = []

        def interrupted_join(timeout: float | None = None) -> None:
            # Ctrl-C while the way out waits for the queue to be written.
            calls.append(None)
            if len(calls) == 1:
                threading.Timer(0.1, writer.go.set).start()
                raise KeyboardInterrupt
            join(timeout)

        behind._helper.join = interrupted_join  # type: ignore[method-assign]
    left = time.monotonic()
    assert not behind._helper.is_alive()
    repo.abort_transaction(None)
    time.sleep(0.2)
    # At most the object the helper held when the interrupt came was written.
    assert len(writer.threads) <= 1
    assert all(t <= left for t in writer.finished_at)
