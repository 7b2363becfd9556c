"""Streams gzip tar layers straight into an OCI layout's blob directory.

A benchmark image is hundreds of megabytes, so a layer is never held in memory:
tarfile writes into a sink that hashes the tar (the diff_id), compresses it,
hashes the blob and writes it to disk in one pass.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pybootc.sample.ocibuild import Compression, ImageSpec, OciLayout

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# What `docker build` and buildah use; the level only affects build time here.
_GZIP_LEVEL = 6


@dataclass(frozen=True)
class WrittenLayer:
    descriptor: dict[str, object]
    diff_id: str


class _GzipBlobSink(io.RawIOBase):
    """A write-only file object: tar bytes in, a gzip blob on disk out (with `gzip`
    false, the tar itself)."""

    def __init__(self, file: BinaryIO, *, gzip: bool = True) -> None:
        super().__init__()
        self._file = file
        # wbits 31: a gzip header with mtime 0, so the same tree gives the same blob.
        self._compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
        self.diff_id = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        data = memoryview(data)
        self.diff_id.update(data)
        self._emit(self._compressor.compress(data) if self._compressor else bytes(data))
        return len(data)

    def finish(self) -> None:
        if self._compressor:
            self._emit(self._compressor.flush())

    def _emit(self, blob: bytes) -> None:
        if blob:
            self.digest.update(blob)
            self._file.write(blob)
            self.size += len(blob)


class LayerTar:
    """An open layer: add members to `tar`; the blob is named when the layer closes."""

    def __init__(self, tar: tarfile.TarFile, sink: _GzipBlobSink) -> None:
        self.tar = tar
        self.sink = sink


@contextmanager
def open_plain_layer(layout: Path) -> Iterator[tuple[tarfile.TarFile, list[WrittenLayer]]]:
    """One uncompressed layer; after the block, the list holds its descriptor."""
    with open_layers(layout, 1, gzip=False) as (layers, written):
        yield layers[0].tar, written


@contextmanager
def open_layers(
    layout: Path, count: int, *, gzip: bool = True
) -> Iterator[tuple[list[LayerTar], list[WrittenLayer]]]:
    """Open `count` gzip layers at once; after the block, the list holds their descriptors."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    temps = [blobs / f".layer-{index}.tmp" for index in range(count)]
    written: list[WrittenLayer] = []
    try:
        with ExitStack() as files:
            layers = []
            for temp in temps:
                sink = _GzipBlobSink(files.enter_context(temp.open("wb")), gzip=gzip)
                # Stream mode: tarfile only ever calls write(), never tell() or seek().
                tar = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
                layers.append(LayerTar(tar, sink))
            yield layers, written
            for layer in layers:
                layer.tar.close()
                layer.sink.finish()
        for layer, temp in zip(layers, temps, strict=True):
            digest = layer.sink.digest.hexdigest()
            os.replace(temp, blobs / digest)
            written.append(
                WrittenLayer(
                    descriptor={
                        "mediaType": (Compression.GZIP if gzip else Compression.NONE).media_type,
                        "digest": f"sha256:{digest}",
                        "size": layer.sink.size,
                    },
                    diff_id=f"sha256:{layer.sink.diff_id.hexdigest()}",
                )
            )
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def tag_image(layout: Path, tag: str, layers: Sequence[WrittenLayer]) -> str:
    """Write the config and manifest for `layers` and tag them in the layout."""
    return OciLayout(layout).add_manifest(
        tag,
        ImageSpec(layers=()),
        [layer.descriptor for layer in layers],
        [layer.diff_id for layer in layers],
    )
