"""The `ostree` backend, ostree-ext's way: every layer is a commit of its own.

Layer blobs come through skopeo's image proxy and are unpacked into the same
diff-directory format as containers-storage's; each is committed under
`ostree/container/blob/<digest>`, so an update fetches only the layers the repo
lacks. The image is then merged from checkouts of those layer commits, and
post-processed and committed exactly as the container backend does.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar

from pybootc.errors import BootcError, error_context
from pybootc.layers.flatten import BlobLayer, flatten_diff_dirs, unpack_blob
from pybootc.layers.paths import WHITEOUT_PREFIX
from pybootc.oci.auth import ANONYMOUS, RegistryAuth
from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.metadata import ImageMetadata
from pybootc.oci.proxy import ImageProxy
from pybootc.ostree.ext_format import (
    BLOB_DIGEST_KEY,
    BLOB_REF_PREFIX,
    blob_digest_of_commit,
    blob_ref,
)
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.repo import (
    checkout,
    commit_directory,
    list_refs,
    read_commit_metadata,
    resolve_ref,
    set_ref,
)
from pybootc.stores import Backend
from pybootc.stores.protocol import DeployedImages, LayerState

if TYPE_CHECKING:
    from pybootc.ostree.origin import OriginImage
    from pybootc.progress import Progress

# OSTree cannot store device nodes, FIFOs or sockets. A layer commit keeps each as
# an empty file carrying this xattr ("c 1 3", "b 7 0", "p", "s"), and the merged
# tree gets the real thing back, so post-processing sees what the image has.
SPECIAL_XATTR = "user.pybootc.special"
_KIND_LETTERS = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


@dataclass(frozen=True)
class ImportedLayers:
    commits: tuple[str, ...]
    fetched: int  # layers that were not in the repo yet
    has_special_files: bool


def _special_entries(directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_IFMT(st.st_mode) in _KIND_LETTERS:
                yield path, st


def _make_storable(layer_dir: Path) -> bool:
    """Turn what OSTree cannot store into files; True if any special file was kept."""
    kept = False
    for path, st in list(_special_entries(layer_dir)):
        fmt = stat.S_IFMT(st.st_mode)
        path.unlink()
        if fmt == stat.S_IFCHR and st.st_rdev == 0:
            # A whiteout: the literal form overlay readers (and ostree-ext) know.
            (path.parent / f"{WHITEOUT_PREFIX}{path.name}").touch(mode=0o600)
            continue
        letter = _KIND_LETTERS[fmt]
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            letter += f" {os.major(st.st_rdev)} {os.minor(st.st_rdev)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
            os.setxattr(fd, SPECIAL_XATTR, letter.encode())
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
        kept = True
    return kept


def special_file_kind(value: bytes) -> tuple[int, int, int]:
    """What a placeholder's SPECIAL_XATTR says: its file type (S_IFCHR, ...), and the
    device's major and minor numbers (0 where it has none)."""
    kind, *numbers = value.decode().split()
    fmt = {v: k for k, v in _KIND_LETTERS.items()}[kind]
    major, minor = (int(numbers[0]), int(numbers[1])) if numbers else (0, 0)
    return fmt, major, minor


def restore_special_files(root: Path) -> None:
    """Give placeholder files in a merged tree back their device, FIFO or socket nature."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            try:
                value = os.getxattr(path, SPECIAL_XATTR, follow_symlinks=False)
            except OSError:
                continue
            st = path.lstat()
            fmt, major, minor = special_file_kind(value)
            device = os.makedev(major, minor)
            # Unlink, never change in place: the file is a hardlink into the repo.
            path.unlink()
            os.mknod(path, fmt | 0o600, device)
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(st.st_mode))


def _import_layer(repo: OSTree.Repo, layer: BlobLayer, work: Path) -> str:
    staging = Path(tempfile.mkdtemp(prefix="layer-", dir=work))
    with error_context(f"Layer {layer.descriptor.digest}"):
        unpack_blob(layer, staging)
    special = _make_storable(staging)
    commit = commit_directory(
        repo,
        staging,
        subject=f"layer {layer.descriptor.digest}",
        metadata={
            BLOB_DIGEST_KEY: GLib.Variant("s", layer.descriptor.digest),
            "pybootc.special-files": GLib.Variant("b", special),
        },
        timestamp=0,
        selinux_policy=None,
        consume=True,
    )
    set_ref(repo, blob_ref(layer.descriptor.digest), commit)
    return commit


class _CountingReader(io.RawIOBase):
    """A blob stream that says how much of it has been read."""

    def __init__(self, stream: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._stream = stream
        self._on_bytes = on_bytes
        self._done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self._done += len(data)
        self._on_bytes(self._done)
        return len(data)


@contextmanager
def _counted(
    open_stream: Callable[[], AbstractContextManager[BinaryIO]], on_bytes: Callable[[int], None]
) -> Iterator[IO[bytes]]:
    with open_stream() as opened:
        yield io.BufferedReader(_CountingReader(opened, on_bytes), buffer_size=1 << 20)


def import_layers(
    repo: OSTree.Repo,
    imgref: OstreeImageReference,
    metadata: ImageMetadata,
    work: Path,
    auth: RegistryAuth = ANONYMOUS,
    *,
    on_bytes: Callable[[str, int], None] = lambda digest, done: None,
) -> ImportedLayers:
    """Make sure every layer of the image is a commit in `repo`; fetch only the missing."""
    layers = metadata.manifest.layers
    commits: list[str] = []
    fetched = 0
    with ImageProxy(auth=auth, staging=work) as proxy:
        opened = proxy.open_image(imgref.imgref.to_skopeo())
        for descriptor, diff_id in zip(layers, metadata.config.diff_ids, strict=True):
            existing = resolve_ref(repo, blob_ref(descriptor.digest))
            if existing is not None:
                commits.append(existing)
                continue
            opener = functools.partial(
                _counted,
                functools.partial(proxy.open_blob, opened, descriptor.digest, descriptor.size),
                functools.partial(on_bytes, descriptor.digest),
            )
            layer = BlobLayer(descriptor, diff_id, opener, source_checks_digest=True)
            commits.append(_import_layer(repo, layer, work))
            fetched += 1
    special = any(
        read_commit_metadata(repo, commit).get("pybootc.special-files") for commit in commits
    )
    return ImportedLayers(tuple(commits), fetched, special)


def flatten_layer_commits(
    repo: OSTree.Repo,
    layers: ImportedLayers,
    work: Path,
    output: Path,
    counted: Callable[[int], None] | None = None,
) -> None:
    """The image's tree at `output` (created), merged from checkouts of its layer commits."""
    checkouts = []
    for index, commit in enumerate(layers.commits):
        checkouts.append(work / f"checkout-{index}")
        checkout(repo, commit, checkouts[-1])
    flatten_diff_dirs(checkouts, output, consume=True, counted=counted)
    if layers.has_special_files:
        restore_special_files(output)


@dataclass(frozen=True)
class _FetchedLayers:
    """An image whose every layer is a commit in the repo."""

    repo: OSTree.Repo
    layers: ImportedLayers
    metadata: ImageMetadata

    def flatten(self, work: Path, root: Path, counted: Callable[[int], None]) -> None:
        flatten_layer_commits(self.repo, self.layers, work, root, counted)


class OstreeStore:
    """ostree-ext's way: each layer a commit of its own in the sysroot's repo."""

    backend: ClassVar[Backend] = Backend.OSTREE

    def __init__(self, sysroot_path: Path, repo: OSTree.Repo | None) -> None:
        self._repo = repo

    def check_target(self, target: OriginImage) -> None:
        if target.decryption_key is not None:
            raise BootcError(
                f"Decryption key {target.decryption_key}: the ostree backend cannot decrypt"
                " images; use --backend container"
            )

    def check_image(self, target: OriginImage, metadata: ImageMetadata) -> None:
        if any(layer.layer_format.encrypted for layer in metadata.manifest.layers):
            raise BootcError(
                f"{target.imgref}: the image is encrypted, which the ostree backend cannot"
                " decrypt; use --backend container"
            )
        if len(metadata.config.diff_ids) != len(metadata.manifest.layers):
            raise BootcError(
                f"{target.imgref}: the image's config and manifest disagree on its layers"
            )

    def layer_states(self, metadata: ImageMetadata) -> tuple[LayerState, ...]:
        repo = self._repo
        return tuple(
            LayerState(d, repo is not None and resolve_ref(repo, blob_ref(d.digest)) is not None)
            for d in metadata.manifest.layers
        )

    def fetch(
        self,
        target: OriginImage,
        metadata: ImageMetadata,
        work: Path,
        auth: RegistryAuth,
        progress: Progress,
    ) -> _FetchedLayers:
        repo = self._opened()
        layers = import_layers(repo, target.imgref, metadata, work, auth, on_bytes=progress.fetched)
        return _FetchedLayers(repo, layers, metadata)

    def collect_garbage(self, deployed: DeployedImages) -> list[str]:
        # Layer commits are no images of their own: nothing to report.
        if self._repo is not None:
            prune_layer_refs(self._repo, set(deployed.layer_digests))
        return []

    def reset(self) -> None:
        """The layer commits live in the repo, which goes with the failed install."""

    def _opened(self) -> OSTree.Repo:
        if self._repo is None:
            raise BootcError("The ostree store has no repo yet")
        return self._repo


def prune_layer_refs(repo: OSTree.Repo, in_use: set[str]) -> list[str]:
    """Drop the refs of layer commits whose digest is not in `in_use`; return them."""
    dropped = []
    for ref, commit in list_refs(repo, BLOB_REF_PREFIX).items():
        digest = blob_digest_of_commit(read_commit_metadata(repo, commit))
        if digest not in in_use:
            set_ref(repo, ref, None)
            dropped.append(ref)
    return dropped
