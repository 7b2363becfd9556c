"""A layer's regular files, read from the disk into objects on two threads.

Reading a diff directory into objects is mostly this: each file read, hashed and handed
to libostree. All three run without the GIL (pread, OpenSSL's SHA-256 over more than
2 KiB, and every libostree call through PyGObject), and libostree takes several writers
in one transaction (its own pull writes objects from a pool of threads). So a helper
thread writes the files the reader queues as it walks, and the reader joins in once
its walk is done: after a pull, when the second core is free, that takes about 30%
off a layer's import.

A thread, not a process: the objects go into the caller's transaction, which a second
process could not write into.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from pybootc.layers.tree import FileMeta, Leaf, LeafKind, ObjectSink


@dataclass(frozen=True)
class _File:
    path: str
    meta: FileMeta
    size: int
    # Its checksum is set by whichever thread writes it; read once both are done.
    leaf: Leaf


def join_through_interrupts(
    helper: threading.Thread, interrupted: Callable[[], None] = lambda: None
) -> None:
    """Wait for `helper` to end, even through an interrupt (a second Ctrl-C): the caller
    is leaving its transaction, which it aborts, and a helper still writing would then
    write straight into the repo. `interrupted` is told of each interrupt (to drop what
    is queued, say); the first is raised once the helper has ended."""
    caught: BaseException | None = None
    while True:
        try:
            helper.join()
            break
        except BaseException as err:
            caught = caught or err
            interrupted()
    if caught is not None:
        raise caught


class FileWriters:
    """Writes the regular files added to it into `objects`: a helper thread from the
    start, the caller's own in `finish`. Used as a context manager, so that the helper
    is stopped and joined however the reading ends: nothing is written into a
    transaction once the caller has left it."""

    def __init__(self, objects: ObjectSink) -> None:
        self._objects = objects
        self._queue: queue.SimpleQueue[_File | None] = queue.SimpleQueue()
        self._files: list[_File] = []
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._helper = threading.Thread(target=self._help, name="file-writer", daemon=True)

    def __enter__(self) -> FileWriters:
        self._helper.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._queue.put(None)  # no more files: the helper may be waiting for one
        join_through_interrupts(self._helper)

    def add(self, path: str, meta: FileMeta, size: int) -> Leaf:
        """Queue the file at `path` (`size` bytes, with `meta`); its leaf, whose
        checksum is known once `finish` returns."""
        self._raise_failure()
        file = _File(path, meta, size, Leaf(LeafKind.REGULAR))
        self._files.append(file)
        self._queue.put(file)
        return file.leaf

    def finish(self) -> tuple[tuple[str, str], ...]:
        """Write what is still queued, with the helper; each file's path and checksum,
        once per file added. The first failure of either thread is raised."""
        # An end (None) for each writer: the queue is first in, first out, so every
        # file is taken before either end is.
        self._queue.put(None)
        self._queue.put(None)
        self._write_queued()
        self._helper.join()
        self._raise_failure()
        return tuple((file.path, file.leaf.checksum) for file in self._files)

    def _help(self) -> None:
        try:
            self._write_queued()
        except BaseException as err:  # raised in the caller's thread instead
            self._failure = self._failure or err
            self._stop.set()

    def _write_queued(self) -> None:
        while not self._stop.is_set():
            file = self._queue.get()
            if file is None:
                return
            file.leaf.checksum = self._write(file)

    def _write(self, file: _File) -> str:
        fd = os.open(file.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return self._objects.regular_from_fd(file.meta, fd, file.size)
        finally:
            os.close(fd)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
