"""Writes OCI image layouts for the guest images: a streamed big layer and small exact ones.

The base tree is hundreds of megabytes, so GNU tar streams it through pigz into the blob
directory while both digests are computed; the small layers are built in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.boot.guest_recipe import CREATED, SOURCE_DATE_EPOCH
from tests.boot.host_command import BootTestError


@dataclass(frozen=True)
class BlobLayer:
    """One layer blob in the cache or the layout, with what a manifest and config need."""

    path: Path
    digest: str
    size: int
    diff_id: str

    def descriptor(self) -> dict[str, object]:
        return {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": self.digest,
            "size": self.size,
        }


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes | None  # None: a directory, or with `link` a symlink
    mode: int
    link: str | None = None


def member(name: str, data: bytes | None, mode: int | None = None) -> Member:
    return Member(name, data, mode if mode is not None else (0o755 if data is None else 0o644))


def _with_parents(members: Sequence[Member]) -> list[Member]:
    """Members sorted by name, each preceded by its parent directories."""
    named = {m.name: m for m in members}
    for m in members:
        parts = m.name.split("/")
        for depth in range(1, len(parts)):
            named.setdefault("/".join(parts[:depth]), member("/".join(parts[:depth]), None))
    return [named[name] for name in sorted(named)]


def put_layer(blobs: Path, members: Sequence[Member]) -> BlobLayer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in _with_parents(members):
            info = tarfile.TarInfo(m.name)
            info.mode, info.mtime = m.mode, SOURCE_DATE_EPOCH
            if m.link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, m.link, 0o777
                tar.addfile(info)
            elif m.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    tar_bytes = raw.getvalue()
    blob = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    digest = hashlib.sha256(blob).hexdigest()
    path = blobs / digest
    path.write_bytes(blob)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    return BlobLayer(path, "sha256:" + digest, len(blob), diff_id)


def put_image(blobs: Path, tag: str, layers: Sequence[BlobLayer]) -> dict[str, object]:
    version = tag.removeprefix("v")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/sbin/init"],
            "Labels": {"containers.bootc": "1", "org.opencontainers.image.version": version},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_descriptor = _put_json(blobs, config, "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": [layer.descriptor() for layer in layers],
    }
    descriptor = _put_json(blobs, manifest, "application/vnd.oci.image.manifest.v1+json")
    return {**descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}}


def _put_json(blobs: Path, value: object, media_type: str) -> dict[str, object]:
    data = json.dumps(value, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


def tar_tree(rootfs: Path, blob: Path) -> BlobLayer:
    """Stream the tree as a gzip tar layer to `blob`, hashing the tar and the blob on the way."""
    tar_argv = [
        "tar",
        "--create",
        "--format=pax",
        "--sort=name",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--pax-option=delete=atime,delete=ctime",
        f"--mtime=@{SOURCE_DATE_EPOCH}",
        "--clamp-mtime",
        # Anchored: only the top-level API filesystems are emptied, not every dev/ in the tree.
        "--anchored",
        "--exclude=dev/*",
        "--exclude=proc/*",
        "--exclude=sys/*",
        "--exclude=run/*",
        "--exclude=tmp/*",
        "--exclude=var/cache/apt/*",
        "--exclude=var/lib/apt/lists/*",
        "--directory",
        os.fspath(rootfs),
        "--",
        *sorted(os.listdir(rootfs)),
    ]
    diff_id = hashlib.sha256()
    with blob.open("wb") as out:
        gz = subprocess.Popen(["pigz", "-n", "-6"], stdin=subprocess.PIPE, stdout=out)
        tar = subprocess.Popen(tar_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdout is not None and gz.stdin is not None
        try:
            while chunk := tar.stdout.read(1 << 20):
                diff_id.update(chunk)
                gz.stdin.write(chunk)
        finally:
            gz.stdin.close()
            tar_err = tar.stderr.read().decode() if tar.stderr else ""
            tar_rc = tar.wait(timeout=600)
            gz_rc = gz.wait(timeout=600)
    if tar_rc != 0 or gz_rc != 0:
        raise BootTestError(f"tar of {rootfs} failed (tar {tar_rc}, pigz {gz_rc}): {tar_err}")
    return _blob_layer(blob, "sha256:" + diff_id.hexdigest())


def _blob_layer(blob: Path, diff_id: str) -> BlobLayer:
    digest = hashlib.sha256()
    with blob.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return BlobLayer(blob, "sha256:" + digest.hexdigest(), blob.stat().st_size, diff_id)


def write_index(layout: Path, manifests: Sequence[dict[str, object]]) -> None:
    """index.json and oci-layout: the layout is complete once these exist."""
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": list(manifests),
    }
    (layout / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}\n')
