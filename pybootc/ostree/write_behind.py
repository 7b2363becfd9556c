"""A layer blob's regular files, written into the repo by a helper thread while the
tar stream is parsed on.

Reading a layer blob is one thread of Python, the tar parser. Without this, for every
file it also waits on libostree writing the object: some 16 system calls, with the GIL
given up. Here the parser hashes the file itself (OpenSSL), so the checksum is known at
once, and queues the write; the helper makes the libostree calls. libostree takes
several writers in one transaction (its own pull writes from a pool of threads), so
the helper writes into the caller's. The parser gives the GIL up often enough (waiting
on the gunzip thread, hashing) for the helper's calls to get it back: an install of the
Debian workload at M took 0.2-0.5 s less in paired hand runs.

The queue holds at most `_MAX_QUEUED` bytes, or one file of any size: a layer of
large files, or of a great many empty ones, must not gather in memory while the helper
catches up.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

from pybootc.layers.file_writers import join_through_interrupts
from pybootc.layers.tree import FileMeta
from pybootc.ostree.objects import ObjectWriter

# Measured at M: 4 MiB kept the parser waiting on the helper and took the gain away;
# 16 MiB gave it all (64 MiB no more).
_MAX_QUEUED = 16 << 20
# What a queued write costs besides its content (its checksum, tuples, the bytes
# object's header: about 300 bytes measured), counted so that empty files are bounded too.
_ENTRY_COST = 512

_Write = tuple[str, tuple[bytes, bytes]]  # a checksum, its content stream


class WriteBehind:
    """An ObjectSink over `objects` whose regular files from memory are written by a
    helper thread. Used as a context manager around the whole read: on the way out,
    every queued object is written (or, if the read failed, dropped) and the helper
    is joined, so nothing is written into a transaction the caller has left."""

    def __init__(self, objects: ObjectWriter) -> None:
        self._objects = objects
        self._queue: deque[_Write | None] = deque()
        self._queued_cost = 0  # _cost() of the queue and the write under way
        self._writing = False
        self._failure: BaseException | None = None
        self._changed = threading.Condition()
        self._helper = threading.Thread(target=self._help, name="object-writer", daemon=True)

    def __enter__(self) -> WriteBehind:
        self._helper.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._changed:
            if kind is not None:
                self._queue.clear()  # the read failed: its objects are not wanted
            self._queue.append(None)  # the end, after what is still queued
            self._changed.notify_all()
        self._join()
        if kind is None:
            self._raise_failure()

    def _join(self) -> None:
        """Wait for the helper to end. Interrupted (Ctrl-C) while it writes what is
        queued, the caller is about to abort its transaction: what is still queued is
        dropped, the helper is waited for all the same (one write at most), and then
        the interrupt goes on."""

        def drop_queued() -> None:
            with self._changed:
                self._queue.clear()
                self._queue.append(None)
                self._changed.notify_all()

        join_through_interrupts(self._helper, drop_queued)

    # --- the sink -------------------------------------------------------------------------

    def regular_from_bytes(self, meta: FileMeta, data: bytes) -> str:
        checksum, stream = self._objects.content_stream(meta, data)
        cost = _cost(stream)
        with self._changed:
            while (
                self._queued_cost
                and self._queued_cost + cost > _MAX_QUEUED
                and self._failure is None
            ):
                self._changed.wait()
            self._raise_failure()
            self._queue.append((checksum, stream))
            self._queued_cost += cost
            self._changed.notify_all()
        return checksum

    def regular_from_fd(self, meta: FileMeta, fd: int, size: int) -> str:
        self._raise_failure()  # not a large file's worth of work after a failed write
        return self._objects.regular_from_fd(meta, fd, size)

    def symlink(self, meta: FileMeta, target: str) -> str:
        return self._objects.symlink(meta, target)

    def dirmeta(self, meta: FileMeta) -> str:
        return self._objects.dirmeta(meta)

    def rewrite(self, checksum: str, meta: FileMeta) -> str:
        # This reads the object `checksum` back, so it must be written by now.
        self.drain()
        return self._objects.rewrite(checksum, meta)

    def drain(self) -> None:
        """Wait until every queued object is written; the helper's failure is raised."""
        with self._changed:
            while (self._queue or self._writing) and self._failure is None:
                self._changed.wait()
            self._raise_failure()

    # --- the helper -----------------------------------------------------------------------

    def _help(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                write = self._queue.popleft()
                if write is None:
                    return
                self._writing = True
            checksum, stream = write
            try:
                self._objects.write_stream(checksum, stream)
            except BaseException as err:  # raised in the parser's thread instead
                with self._changed:
                    self._failure = err
                    self._queue.clear()
                    self._writing = False
                    self._changed.notify_all()
                return
            with self._changed:
                self._writing = False
                self._queued_cost -= _cost(stream)
                self._changed.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


def _cost(stream: tuple[bytes, bytes]) -> int:
    return len(stream[1]) + _ENTRY_COST
