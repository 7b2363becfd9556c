"""A layer blob as a verified, decompressed byte stream.

The compressed bytes are checked against the manifest's digest (unless the
source already does, as skopeo's image proxy does) and the decompressed ones
against the config's diff_id, so a corrupt, truncated or
substituted blob is refused however far the tar reader got. Decompression runs
in a thread (ISA-L's inflate, zstd and sha256 release the GIL) so that it overlaps with
writing files.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Callable, Iterator
from typing import IO, cast

import zstandard
from isal import isal_zlib

from pybootc.errors import BootcError
from pybootc.oci.model import LayerCompression

_READ_SIZE = 1 << 20
_GZIP_ERROR = cast(type[Exception], isal_zlib.error)
_QUEUE_DEPTH = 8


class _DigestMismatch(BootcError):
    pass


def _gzip_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    # ISA-L's inflate, zlib's interface at over twice zlib's speed: gunzip is what
    # bounds the whole flatten. wbits 47 accepts a gzip header; concatenated gzip
    # members are one valid stream, so a finished member is followed by a fresh
    # decompressor. Output is capped per call: a small blob of zeros can expand
    # to gigabytes.
    decomp = isal_zlib.decompressobj(wbits=47)
    in_member = False
    data = b""
    while data or (data := raw.read(_READ_SIZE)):
        in_member = True
        while True:
            out = decomp.decompress(data, _READ_SIZE)
            data = decomp.unconsumed_tail
            if out:
                yield out
            if decomp.eof or (len(out) < _READ_SIZE and not data):
                break
        if decomp.eof:
            data = decomp.unused_data
            decomp = isal_zlib.decompressobj(wbits=47)
            in_member = False
    if in_member:
        raise BootcError("corrupt gzip stream: unexpected end of data")


def _zstd_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    while chunk := reader.read(_READ_SIZE):
        yield chunk


def _plain_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    while chunk := raw.read(_READ_SIZE):
        yield chunk


class _HashingReader(io.RawIOBase):
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class LayerStream(io.RawIOBase):
    """Readable decompressed tar bytes of one blob; call `verify()` after reading."""

    def __init__(
        self,
        raw: IO[bytes],
        compression: LayerCompression,
        *,
        digest: str,
        diff_id: str | None,
        check_digest: bool = True,
    ) -> None:
        self._compressed = _HashingReader(raw) if check_digest else None
        self._digest = digest
        self._diff_id = diff_id
        self._raw = raw
        self._uncompressed = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self._buffer = memoryview(b"")
        self._done = False
        self._stop = threading.Event()
        chunks = {
            LayerCompression.GZIP: _gzip_chunks,
            LayerCompression.ZSTD: _zstd_chunks,
            LayerCompression.NONE: _plain_chunks,
        }[compression]
        self._thread = threading.Thread(target=self._produce, args=(chunks,), daemon=True)
        self._thread.start()

    def _produce(self, chunks: Callable[[IO[bytes]], Iterator[bytes]]) -> None:
        try:
            source = self._compressed or self._raw
            for chunk in chunks(source):  # type: ignore[arg-type]
                self._uncompressed.update(chunk)
                if self._stop.is_set():
                    return
                self._queue.put(chunk)
            self._queue.put(None)
        except _GZIP_ERROR as err:
            self._queue.put(BootcError(f"corrupt gzip stream: {err}"))
        except zstandard.ZstdError as err:
            self._queue.put(BootcError(f"corrupt zstd stream: {err}"))
        except BaseException as err:  # handed to the reading thread
            self._queue.put(err)

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        if self._done:
            return False
        item = self._queue.get()
        if item is None:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._buffer = memoryview(item)
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._buffer and not self._next_chunk():
            return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def verify(self) -> None:
        """Read what the tar reader left (padding) and check both digests."""
        while self._buffer or self._next_chunk():
            self._buffer = memoryview(b"")
        if self._compressed is not None:
            got = "sha256:" + self._compressed.sha256.hexdigest()
            if got != self._digest:
                raise _DigestMismatch(f"Digest mismatch for blob {self._digest}: got {got}")
        if self._diff_id is not None:
            got = "sha256:" + self._uncompressed.hexdigest()
            if got != self._diff_id:
                raise _DigestMismatch(
                    f"Uncompressed digest mismatch for blob {self._digest}: "
                    f"expected diff_id {self._diff_id}, got {got}"
                )

    def close(self) -> None:
        self._stop.set()
        # Free the producer if it is blocked on a full queue; if it is blocked
        # reading the blob, closing the blob's pipe (the caller's job) frees it.
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                self._thread.join(timeout=0.05)
        super().close()
