"""Flattening an image's layers into one directory, from either source.

Tar blobs are first unpacked, each into a scratch diff directory inside the
output, in the overlay format containers-storage uses; diff directories (ours,
or containers-storage's) are then merged the way the kernel's overlayfs would.
The output directory is created here and removed again on any failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from pybootc.errors import BootcError, error_context
from pybootc.layers.blobstream import LayerStream
from pybootc.layers.diffdir import LayerEntry
from pybootc.layers.directory_sink import DirectorySink
from pybootc.layers.extract import LayerStats, extract_layer
from pybootc.layers.merge import Markers, merge_layers
from pybootc.oci.model import Descriptor

T = TypeVar("T")

# The root of a flattened tree when no layer says otherwise: what containers-storage
# and every OS image use.
_DEFAULT_ROOT_MODE = stat.S_IFDIR | 0o755


@dataclass(frozen=True)
class FlattenSummary:
    layers: int
    entries: int
    bytes: int
    seconds: float

    def line(self) -> str:
        return (
            f"Flattened {self.layers} layers: {self.entries} entries, "
            f"{self.bytes} bytes in {self.seconds:.2f}s"
        )


@dataclass(frozen=True)
class BlobLayer:
    """A layer blob to be read: its descriptor, expected diff_id and an opener."""

    descriptor: Descriptor
    diff_id: str | None
    open: Callable[[], AbstractContextManager[IO[bytes]]]
    # skopeo's image proxy hashes each blob as it sends it: no need to twice.
    source_checks_digest: bool = False


def _default_root() -> LayerEntry:
    # Ten stat fields, then float and nanosecond times, all zero.
    st = os.stat_result((_DEFAULT_ROOT_MODE, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    return LayerEntry(layer=-1, path="", st=st)


@contextlib.contextmanager
def new_output_directory(output: Path) -> Iterator[int]:
    """Create `output` (it must not exist) and remove it again if anything fails."""
    try:
        os.mkdir(output, 0o755)
    except FileExistsError:
        raise BootcError(f"Output directory {output} already exists") from None
    except OSError as err:
        raise BootcError(f"Creating {output}: {err.strerror}") from None
    fd = os.open(output, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        yield fd
    except BaseException:
        os.close(fd)
        fd = -1
        shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise BootcError(f"{what}: {err.strerror}{where}") from None


def flatten_diff_dirs(
    diff_dirs: Sequence[Path],
    output: Path,
    *,
    markers: Markers = (),
    counted: Callable[[int], None] | None = None,
) -> FlattenSummary:
    """Merge containers-storage's diff directories (lowest first), copied, into a new
    `output`; `markers`, each layer's as its members give them. `counted` is told the
    number of entries written, now and then."""
    start = time.monotonic()
    with new_output_directory(output) as out_fd, _os_errors("Flattening layers"):
        sink = DirectorySink(out_fd, move=False, counted=counted)
        merge_layers(diff_dirs, sink, _default_root(), markers)
    return FlattenSummary(
        len(diff_dirs), sink.stats.entries, sink.stats.bytes, time.monotonic() - start
    )


def read_blob(layer: BlobLayer, consume: Callable[[IO[bytes]], T]) -> T:
    """`consume` the verified, uncompressed tar stream of one layer blob; its digest and
    diff_id are checked once it has been read to the end."""
    desc = layer.descriptor
    with layer.open() as raw:
        stream = LayerStream(
            raw,
            desc.compression,
            digest=desc.digest,
            diff_id=layer.diff_id,
            check_digest=not layer.source_checks_digest,
        )
        try:
            result = consume(stream)  # type: ignore[arg-type]
            stream.verify()
        finally:
            stream.close()
    return result


def unpack_blob(layer: BlobLayer, dest: Path) -> LayerStats:
    """Unpack one verified layer blob into the empty directory `dest` (diff-dir format)."""

    def extract(stream: IO[bytes]) -> LayerStats:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return extract_layer(stream, fd)
        finally:
            os.close(fd)

    return read_blob(layer, extract)


def flatten_blobs(layers: Sequence[BlobLayer], output: Path) -> FlattenSummary:
    """Unpack and merge layer blobs (lowest first) into a new `output`."""
    start = time.monotonic()
    with new_output_directory(output) as out_fd:
        work = Path(tempfile.mkdtemp(prefix=".pybootc-layers-", dir=output))
        diff_dirs: list[Path] = []
        marked: list[set[str]] = []
        root = _default_root()
        for index, layer in enumerate(layers):
            dest = work / str(index)
            dest.mkdir()
            with (
                error_context(f"Layer {index + 1} ({layer.descriptor.digest})"),
                _os_errors("Unpacking"),
            ):
                stats = unpack_blob(layer, dest)
            diff_dirs.append(dest)
            marked.append(stats.marked_dirs)
            if stats.sets_root:
                root = LayerEntry(index, str(dest), os.lstat(dest))
        with _os_errors("Merging layers"):

            def movable(entry: LayerEntry) -> bool:
                relative = os.path.relpath(entry.path, diff_dirs[entry.layer])
                return relative not in marked[entry.layer]

            sink = DirectorySink(out_fd, move=True, movable=movable)
            merge_layers(diff_dirs, sink, root)
            shutil.rmtree(work)
    return FlattenSummary(
        len(layers), sink.stats.entries, sink.stats.bytes, time.monotonic() - start
    )
