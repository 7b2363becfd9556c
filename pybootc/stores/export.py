"""An image the ostree store holds, written back out as an OCI image layout.

Each layer commit (`ostree/container/blob/<digest>`) becomes an uncompressed tar layer
again: whiteouts as `.wh.` files, opaque directories as `.wh..wh..opq`, device nodes,
FIFOs and sockets from their placeholders, xattrs as PAX `SCHILY.xattr` records. The
image keeps its config, with the new layers' diff_ids. This is how `image
copy-to-storage` gets an ostree-backend deployment's image into containers-storage;
upstream's ostree-ext exports from its layer commits the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pybootc.errors import BootcError
from pybootc.layers.paths import OPAQUE_MARKER, OPAQUE_XATTRS, WHITEOUT_PREFIX
from pybootc.layers.special import SPECIAL_XATTR, is_image_xattr, special_file_kind
from pybootc.oci.model import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
)
from pybootc.ostree.ext_format import blob_ref, image_of_commit, manifest_of_commit
from pybootc.ostree.gi import OSTree
from pybootc.ostree.repo import checkout, read_commit_metadata, resolve_ref


class _HashingWriter:
    """A file that hashes what is written to it: the layer's digest, in one pass."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._out.write(data)


def _xattrs(path: str) -> dict[str, bytes]:
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False)
    }


def _entries(root: Path) -> Iterator[tuple[str, str]]:
    """(path on disk, name in the layer) below `root`, parents first, in name order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted((*dirnames, *filenames)):
            full = os.path.join(dirpath, name)
            yield full, os.path.relpath(full, root)


def _tarinfo(full: str, name: str, st: os.stat_result, xattrs: dict[str, bytes]) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = 0  # OSTree keeps no times: every object has 0
    kept = {key: value for key, value in xattrs.items() if is_image_xattr(key)}
    # tarfile writes str PAX values with surrogateescape: binary xattrs survive.
    info.pax_headers = {
        f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
        for key, value in sorted(kept.items())
    }
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(full)
    elif SPECIAL_XATTR in xattrs:
        kind, major, minor = special_file_kind(xattrs[SPECIAL_XATTR])
        info.type = {
            stat.S_IFCHR: tarfile.CHRTYPE,
            stat.S_IFBLK: tarfile.BLKTYPE,
            stat.S_IFIFO: tarfile.FIFOTYPE,
        }.get(kind, tarfile.REGTYPE)
        if kind == stat.S_IFSOCK:
            raise BootcError(f"{name}: a socket cannot be written to a tar layer")
        info.devmajor, info.devminor = major, minor
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    return info


def _is_opaque(xattrs: dict[str, bytes]) -> bool:
    return any(xattrs.get(name) == b"y" for name in OPAQUE_XATTRS)


def _shares_content(info: tarfile.TarInfo) -> bool:
    """Whether a file may be written as a hardlink to another with its inode: a
    checkout gives identical objects one inode. Never a whiteout, which must stand
    as a file of its own, nor an empty file."""
    base = info.name.rsplit("/", 1)[-1]
    return info.type == tarfile.REGTYPE and info.size > 0 and not base.startswith(WHITEOUT_PREFIX)


def write_layer(tree: Path, out: IO[bytes]) -> None:
    """The layer tar of a layer commit checked out at `tree`."""
    first_name: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for full, name in _entries(tree):
            st = os.lstat(full)
            xattrs = _xattrs(full)
            info = _tarinfo(full, name, st, xattrs)
            if info.type == tarfile.DIRTYPE:
                tar.addfile(info)
                if _is_opaque(xattrs):
                    marker = tarfile.TarInfo(f"{name}/{OPAQUE_MARKER}")
                    marker.mtime = 0
                    tar.addfile(marker)
                continue
            if _shares_content(info):
                key = (st.st_dev, st.st_ino)
                if key in first_name:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, first_name[key], 0
                    tar.addfile(info)
                    continue
                first_name[key] = name
            if info.type == tarfile.REGTYPE and info.size:
                with open(full, "rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)


def export_image(repo: OSTree.Repo, commit: str, layout: Path, tag: str, work: Path) -> str:
    """Write the image the merge commit `commit` was made from into a new OCI layout
    at `layout` under `tag`, from its layer commits; return the `oci:` reference."""
    metadata = read_commit_metadata(repo, commit)
    recorded = image_of_commit(metadata)
    raw_manifest = manifest_of_commit(metadata)
    if recorded is None or raw_manifest is None:
        raise BootcError(f"Commit {commit} records no image")
    _, config = recorded
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    layers: list[dict[str, object]] = []
    for position, descriptor in enumerate(json.loads(raw_manifest)["layers"]):
        layer_commit = resolve_ref(repo, blob_ref(descriptor["digest"]))
        if layer_commit is None:
            raise BootcError(f"The repo has no commit of layer {descriptor['digest']}")
        tree = work / f"layer-{position}"
        checkout(repo, layer_commit, tree)
        staging = blobs / f".layer-{position}"
        with open(staging, "wb") as out:
            writer = _HashingWriter(out)
            write_layer(tree, writer)  # type: ignore[arg-type]
        digest = f"sha256:{writer.hash.hexdigest()}"
        staging.rename(blobs / digest.removeprefix("sha256:"))
        layers.append({"mediaType": MEDIA_TYPE_OCI_LAYER, "digest": digest, "size": writer.size})
    # Uncompressed, each layer's digest is its diff_id.
    rootfs = {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}
    config_digest, config_size = _put(blobs, json.dumps({**config, "rootfs": rootfs}).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_OCI_CONFIG,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    }
    manifest_digest, manifest_size = _put(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return f"oci:{layout}:{tag}"


def _put(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)
