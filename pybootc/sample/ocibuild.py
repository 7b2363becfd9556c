"""Writes small OCI image layouts whose tar layers are controlled entry by entry.

Tests, benchmarks and the demo use it to make exact images (whiteouts, opaque
markers, hardlinks, PAX xattrs, long names, sparse files, devices) without a
container engine. Layers are written in the order given, byte for byte.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from pybootc import tools

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Kind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


_TAR_TYPE = {
    Kind.FILE: tarfile.REGTYPE,
    Kind.DIR: tarfile.DIRTYPE,
    Kind.SYMLINK: tarfile.SYMTYPE,
    Kind.HARDLINK: tarfile.LNKTYPE,
    Kind.CHAR: tarfile.CHRTYPE,
    Kind.BLOCK: tarfile.BLKTYPE,
    Kind.FIFO: tarfile.FIFOTYPE,
}


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_type(self) -> str:
        base = "application/vnd.oci.image.layer.v1.tar"
        return base if self is Compression.NONE else f"{base}+{self.value}"


@dataclass(frozen=True)
class Entry:
    """One tar member, exactly as it will be written."""

    name: str
    kind: Kind = Kind.FILE
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0
    mtime: int = 1_700_000_000
    # (offset, length) runs of data for a GNU PAX 1.0 sparse member of size `size`.
    sparse: tuple[tuple[int, int], ...] | None = None
    size: int = 0


def file(name: str, data: bytes | str = b"", mode: int = 0o644, **kw: object) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(name, Kind.FILE, data=raw, mode=mode, **kw)  # type: ignore[arg-type]


def directory(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, Kind.DIR, mode=mode, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> Entry:
    return Entry(name, Kind.SYMLINK, linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]


def hardlink(name: str, target: str, mode: int = 0o644, **kw: object) -> Entry:
    # A link's header carries the mode it gives the shared inode: say it like tar does.
    return Entry(name, Kind.HARDLINK, linkname=target, mode=mode, **kw)  # type: ignore[arg-type]


def whiteout(path: str) -> Entry:
    parent, _, base = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", mode=0o600)


def opaque(dirpath: str) -> Entry:
    return file(f"{dirpath.rstrip('/')}/.wh..wh..opq", mode=0o600)


def sparse_file(
    name: str, size: int, runs: Sequence[tuple[int, bytes]], mode: int = 0o644
) -> Entry:
    """A GNU sparse member: `runs` are (offset, bytes); the rest reads as zeros."""
    data = b"".join(chunk for _, chunk in runs)
    spans = tuple((off, len(chunk)) for off, chunk in runs)
    return Entry(name, Kind.FILE, data=data, mode=mode, sparse=spans, size=size)


@dataclass(frozen=True)
class Layer:
    entries: tuple[Entry, ...]
    compression: Compression = Compression.GZIP
    tar_format: int = tarfile.PAX_FORMAT
    # PAX global header records written before the first member.
    global_headers: Mapping[str, str] = field(default_factory=dict)
    # The tar stream as given, instead of one written of `entries`: for the streams
    # tarfile's writer does not make (broken headers, old-style types).
    raw: bytes | None = None


def layer(*entries: Entry, compression: Compression = Compression.GZIP, **kw: object) -> Layer:
    return Layer(tuple(entries), compression, **kw)  # type: ignore[arg-type]


def _tarinfo(entry: Entry, tar_format: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(entry.name)
    info.type = _TAR_TYPE[entry.kind]
    default_mode = 0o755 if entry.kind is Kind.DIR else 0o644
    info.mode = default_mode if entry.mode is None else entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    payload = entry.data if entry.kind is Kind.FILE else b""
    pax: dict[str, str] = {}
    for key, value in entry.xattrs.items():
        # tarfile encodes PAX values from str with surrogateescape, so binary
        # values such as security.capability survive byte for byte.
        pax[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
    if entry.sparse is not None:
        payload = _sparse_payload(entry.sparse, entry.data)
        pax.update(
            {
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": entry.name,
                "GNU.sparse.realsize": str(entry.size),
            }
        )
        info.name = f"GNUSparseFile.0/{entry.name.rsplit('/', 1)[-1]}"
    if pax and tar_format != tarfile.PAX_FORMAT:
        raise ValueError("xattrs and sparse files need the PAX format")
    info.pax_headers = pax
    info.size = len(payload)
    return info, payload


def _sparse_payload(spans: tuple[tuple[int, int], ...], data: bytes) -> bytes:
    """PAX 1.0 sparse data: a decimal map padded to a block, then the runs."""
    lines = [str(len(spans))] + [f"{n}" for span in spans for n in span]
    header = ("\n".join(lines) + "\n").encode()
    header += b"\0" * (-len(header) % tarfile.BLOCKSIZE)
    return header + data


def write_tar(layer_: Layer) -> bytes:
    """The uncompressed tar stream of a layer."""
    if layer_.raw is not None:
        return layer_.raw
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=layer_.tar_format) as tar:
        if layer_.global_headers:
            buf.write(tarfile.TarInfo.create_pax_global_header(dict(layer_.global_headers)))
            tar.offset = buf.tell()
        for entry in layer_.entries:
            info, payload = _tarinfo(entry, layer_.tar_format)
            tar.addfile(info, io.BytesIO(payload) if info.size else None)
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression is Compression.GZIP:
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression is Compression.ZSTD:
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageSpec:
    layers: tuple[Layer, ...]
    architecture: str = "amd64"
    labels: Mapping[str, str] = field(default_factory=dict)
    # None: the config says nothing of when the image was made.
    created: str | None = "2026-01-01T00:00:00Z"


class OciLayout:
    """An OCI image layout directory that images are added to by tag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        if not (path / "index.json").exists():
            self._write_index([])

    def _write_index(self, manifests: list[dict[str, object]]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.path / "index.json").write_text(json.dumps(index))

    def put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        blob = self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not blob.exists():
            blob.write_bytes(data)
        return digest

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def add_image(self, tag: str, spec: ImageSpec, *, layer_media_type: str | None = None) -> str:
        """Write the image's blobs, tag it, and return its manifest digest."""
        descriptors, diff_ids = [], []
        for lay in spec.layers:
            raw = write_tar(lay)
            diff_ids.append(sha256_digest(raw))
            blob = compress(raw, lay.compression)
            descriptors.append(
                {
                    "mediaType": layer_media_type or lay.compression.media_type,
                    "digest": self.put_blob(blob),
                    "size": len(blob),
                }
            )
        return self.add_manifest(tag, spec, descriptors, diff_ids)

    def add_manifest(
        self,
        tag: str,
        spec: ImageSpec,
        layers: Iterable[Mapping[str, object]],
        diff_ids: Sequence[str],
    ) -> str:
        config = {
            "architecture": spec.architecture,
            "os": "linux",
            **({} if spec.created is None else {"created": spec.created}),
            "config": {"Labels": dict(spec.labels)} if spec.labels else {},
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
        config_raw = json.dumps(config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": self.put_blob(config_raw),
                "size": len(config_raw),
            },
            "layers": list(layers),
        }
        manifest_raw = json.dumps(manifest).encode()
        digest = self.put_blob(manifest_raw)
        index = json.loads((self.path / "index.json").read_text())
        kept = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
        kept.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest_raw),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        self._write_index(kept)
        return digest

    def ref(self, tag: str) -> str:
        return f"oci:{self.path}:{tag}"


def push(source: str, destination: str, *extra: str) -> None:
    """Copy an image with skopeo, e.g. from an OCI layout to a loopback registry."""
    tools.run(["skopeo", "copy", "--quiet", *extra, source, destination])
