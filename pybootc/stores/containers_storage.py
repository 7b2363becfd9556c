"""A containers-storage root (overlay driver) driven through skopeo and podman.

bootc's own storage, the scratch storage of `internals flatten` and the kernel
oracle of the tests are all one of these: a root, a runroot kept outside it, and
the transport string and environment that point skopeo and podman at that pair
instead of the host's store.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybootc import tools
from pybootc.errors import BootcError, error_context
from pybootc.layers.member_markers import LayerMarkers, Member, read_markers
from pybootc.oci.sigpolicy import policy_options
from pybootc.stores.layer_members import tar_split_members, toc_members

log = logging.getLogger(__name__)

# Where the runroots of pybootc's storages live: podman's database and locks, one
# directory per storage, while the storage exists.
RUNROOTS = Path("/run/pybootc/storage")


# A runroot is made just before podman makes its storage: one younger than this may
# belong to a storage that another command is creating right now.
_ORPHAN_AGE = 600


@functools.cache
def _remove_orphan_runroots() -> None:
    """Remove the runroots whose storage is gone (a sysroot removed, a disk unplugged):
    each names its storage in the storage.conf that podman_env writes. Once per
    process: a command opens its storage many times."""
    try:
        runroots = list(RUNROOTS.iterdir())
    except OSError:
        return
    for runroot in runroots:
        conf = runroot / "storage.conf"
        try:
            text = conf.read_text()
            age = time.time() - conf.stat().st_mtime
        except OSError:
            continue
        found = re.search(r'^graphroot = "(.*)"$', text, re.M)
        if found is not None and not Path(found.group(1)).is_dir() and age > _ORPHAN_AGE:
            shutil.rmtree(runroot, ignore_errors=True)


# Partial pulls (zstd:chunked layers fetched by the files the storage lacks) stay off:
# the containers-storage of both Debian releases makes trees from them that differ from
# the layers' tar streams (1.43 drops owners and device nodes, 1.57 makes implied
# parents 0000; bench/partial.py measures it). This switch turns them on for trying.
PARTIAL_PULLS_ENV = "PYBOOTC_EXPERIMENTAL_PARTIAL_PULLS"


# How skopeo names a layer that containers-storage failed to pull partially: 1.57 fails
# some (an `openat2 ...: no such file or directory` while it copies a file it already
# has from another layer, in about one update in four of tests/test_partial_pulls.py).
_PARTIAL_PULL_FAILED = "partial pull of blob"
# skopeo 1.9.3 (Debian 12) sometimes panics in a partial pull, in `mime/multipart` as
# a zstd decoder's goroutine reads a part of the registry's answer to a range request
# (seen once in 80 pulls of that test's image beside other load, and once in a whole
# `make test`).
_SKOPEO_PANICKED = "skopeo: panic: "


def _failed_partially(message: str) -> bool:
    """Whether a pull with partial pulls on failed as only partial pulls fail."""
    return _PARTIAL_PULL_FAILED in message or message.startswith(_SKOPEO_PANICKED)


def partial_pulls_enabled() -> bool:
    return os.environ.get(PARTIAL_PULLS_ENV) == "1"


def _pull_options(partial: bool) -> str:
    enabled = "true" if partial else "false"
    # Never hardlinked from other layers: a diff directory's files stay its own.
    return (
        f'[storage.options]\npull_options = {{enable_partial_images = "{enabled}", '
        'use_hard_links = "false", ostree_repos = ""}\n'
    )


# The big data item in which containers-storage keeps a partially pulled layer's table
# of contents (the zstd:chunked manifest).
_TOC_KEY = "zstd-chunked-manifest"


def _big_data_file(key: str) -> str:
    """The name containers-storage gives the file of a layer's big data item `key`."""
    return "=" + base64.b64encode(key.encode()).decode()


def _unpacked_digest(layer: dict[str, object]) -> str | None:
    """The digest of the tar stream the layer was unpacked from, where the record has
    it: its diff digest, when the record also has the blob's (a partial pull of
    containers-storage 1.43 records the blob's digest as the diff digest, and none
    besides)."""
    diff_digest, compressed = layer.get("diff-digest"), layer.get("compressed-diff-digest")
    if isinstance(diff_digest, str) and diff_digest and isinstance(compressed, str) and compressed:
        return diff_digest
    return None


def _incomplete(layer: dict[str, Any]) -> bool:
    """Whether containers-storage flags the layer as not yet (or never) written whole."""
    return bool((layer.get("flags") or {}).get("incomplete"))


def _known_as(layer: dict[str, object]) -> tuple[str, ...]:
    """The digests a layer record (layers.json) names its layer by, as a manifest's
    descriptor does (`Descriptor.known_as`), the blob's first; none for a layer no
    blob made (a container's). A layer pulled partially has no compressed digest:
    then its diff digest is the blob's (containers-storage 1.43 cannot know the tar
    stream's), or the record has its table of contents' (1.57, whose diff digest is
    the tar stream's)."""
    found = tuple(
        digest
        for key in ("compressed-diff-digest", "toc-digest")
        if isinstance(digest := layer.get(key), str) and digest
    )
    diff_digest = layer.get("diff-digest")
    return found or ((diff_digest,) if isinstance(diff_digest, str) and diff_digest else ())


class IncompleteImage(BootcError):
    """An image a layer record of which is gone: what a command killed in the middle
    of containers-storage's own writes can leave."""


@dataclass(frozen=True)
class StoredLayer:
    """One layer of an image in the storage: the first digest it is known by (the blob
    it was pulled from, where the storage knows that), and its overlay diff directory."""

    digest: str
    diff_dir: Path
    layer_id: str
    # Read as its names were checked; None for a layer whose names passed before.
    markers: LayerMarkers | None = None
    # The digest of the tar stream containers-storage unpacked, where it read the whole
    # stream (not in a partial pull of containers-storage 1.43, whose diff digest is
    # the blob's): what the config's diff_id must be.
    diff_digest: str | None = None


@dataclass(frozen=True)
class ContainersStorage:
    root: Path
    runroot: Path

    @classmethod
    def at(cls, root: Path) -> ContainersStorage:
        """The storage at `root`, with its runroot in RUNROOTS, named by a hash of `root`
        so that every caller agrees on it. Runroots of storages that are gone are
        removed on the way."""
        root = root.absolute()
        key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        _remove_orphan_runroots()
        return cls(root, RUNROOTS / key)

    def reference(self, name: str) -> str:
        """The skopeo transport string for `name` in this storage."""
        return f"containers-storage:[overlay@{self.root}+{self.runroot}]{name}"

    def podman_env(self, *, partial: bool | None = None) -> dict[str, str]:
        """The environment that points podman at this storage; pulls in it are partial
        where `partial` says so (default: `partial_pulls_enabled()`).

        Not `podman --root`: with it podman keeps its database in ROOT/libpod and
        records ROOT there, so a storage made under an install-time mount fails
        ("database configuration mismatch") once the host boots and sees it at
        another path. The database lives in the runroot instead, and nothing in
        ROOT records where ROOT is.
        """
        libpod = self.runroot / "libpod"
        files = {
            "storage.conf": (
                f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}"\n'
                f'runroot = "{self.runroot}"\n'
                f"{_pull_options(partial_pulls_enabled() if partial is None else partial)}"
            ),
            "containers.conf": (
                f'[engine]\nstatic_dir = "{libpod}"\ntmp_dir = "{libpod}/tmp"\n'
                f'volume_path = "{libpod}/volumes"\nevents_logger = "none"\n'
            ),
        }
        self.runroot.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = self.runroot / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        return {
            "CONTAINERS_STORAGE_CONF": str(self.runroot / "storage.conf"),
            "CONTAINERS_CONF": str(self.runroot / "containers.conf"),
        }

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run `podman ARGS` against this storage."""
        return tools.run(["podman", *args], env=self.podman_env(), check=check)

    def pull(
        self,
        source: str,
        name: str,
        *,
        extra: Sequence[str] = (),
        tmpdir: Path | None = None,
    ) -> None:
        """Copy `source` (any skopeo transport) into this storage as `name`, under the
        signature policy every pull of pybootc's gets. skopeo stages blobs in `tmpdir`
        (default /var/tmp), where a killed pull leaves them.

        A pull with partial pulls on that containers-storage fails partway through a
        layer, or in which skopeo panics, is made again whole, with a warning: the
        switch is there to save bytes, never to fail an update that a whole pull
        makes."""
        staging = ["--tmpdir", str(tmpdir)] if tmpdir is not None else []
        # The storage as the default one of storage.conf, not `reference`: a store named
        # in the reference gets none of its pull options.
        argv = [
            "skopeo", *policy_options(), *staging, "copy", "--quiet", *extra,
            source, f"containers-storage:{name}",
        ]  # fmt: skip
        partial = partial_pulls_enabled()
        try:
            tools.run(argv, env=self.podman_env(partial=partial))
        except BootcError as err:
            if not partial or not _failed_partially(err.message):
                raise
            log.warning("A partial pull failed; pulling whole layers instead (%s)", err)
            tools.run(argv, env=self.podman_env(partial=False))

    def stored_layer_digests(self) -> set[str]:
        """The digests of the layers this storage has unpacked (`_known_as`): a pull
        skips them. One still flagged incomplete (being written, or left by a killed
        pull, which the next pull removes) is not."""
        try:
            layers = json.loads((self.root / "overlay-layers/layers.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return set()  # no storage there (yet): an install checks a disk image first
        except (OSError, ValueError) as err:
            raise BootcError(f"Reading the metadata of {self.root}: {err}") from None
        return set().union(*(_known_as(layer) for layer in layers if not _incomplete(layer)))

    def _records(
        self, *, images: bool = True
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The storage's image records (none unless `images`), and its layer records by
        ID: read from its own metadata (images.json; layers.json and, for some layers,
        volatile-layers.json), which containers-storage replaces atomically. Starting
        podman to ask costs more than the rest of flattening a small image."""
        layers: list[dict[str, Any]] = []
        found: list[dict[str, Any]] = []
        try:
            if images:
                found = json.loads((self.root / "overlay-images/images.json").read_bytes())
            for kept in ("layers.json", "volatile-layers.json"):
                path = self.root / "overlay-layers" / kept
                if path.exists():
                    layers += json.loads(path.read_bytes())
        except (OSError, ValueError) as err:
            raise BootcError(f"Reading the metadata of {self.root}: {err}") from None
        return found, {layer["id"]: layer for layer in layers}

    @staticmethod
    def _chain(image: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
        """The IDs of the image's layers, top first, as far as their records go."""
        chain = []
        layer_id = image.get("layer")
        while layer_id:
            chain.append(str(layer_id))
            layer_id = by_id.get(layer_id, {}).get("parent")
        return chain

    def _layers(self, name: str) -> list[dict[str, object]]:
        """The image's layer records, lowest layer first."""
        images, by_id = self._records()
        image = next((i for i in images if name in i.get("names", ()) or i["id"] == name), None)
        if image is None:
            raise BootcError(f"No image {name} in {self.root}")
        chain = self._chain(image, by_id)
        if not chain:
            raise BootcError(f"Image {name} has no layers")
        missing = [layer for layer in chain if layer not in by_id]
        if missing:
            raise IncompleteImage(f"Image {name} lacks the record of its layer {missing[0]}")
        return [by_id[layer] for layer in reversed(chain)]

    def image_layers(
        self, name: str, *, checked: frozenset[str] = frozenset()
    ) -> list[StoredLayer]:
        """The image's layers, lowest first, once every member name of them has passed
        the rules the blob path applies. `checked` names the layers that have passed
        already: by layer ID (read by `complete_layer`), or by the digest of the blob
        they came from.

        containers-storage cleans a name such as `../x` into `x` as it unpacks, so the
        diff directory cannot show that the layer tried to escape; the tar-split data
        it keeps of each layer has the names as the layer's tar stream gave them.
        """
        return [
            self._stored_layer(layer, check=not {str(layer["id"]), *_known_as(layer)} & checked)
            for layer in self._layers(name)
        ]

    def _stored_layer(self, layer: dict[str, Any], *, check: bool = True) -> StoredLayer:
        digest = next(iter(_known_as(layer)), str(layer["id"]))  # none: not a pulled layer
        layer_id = str(layer["id"])
        markers = None
        if check:
            with error_context(f"Layer {digest}"):
                markers = self.layer_markers(layer_id)
        diff_dir = self.root / "overlay" / layer_id / "diff"
        return StoredLayer(digest, diff_dir, layer_id, markers, _unpacked_digest(layer))

    def complete_layers(self, wanted: frozenset[str]) -> dict[str, dict[str, Any]]:
        """The records of the layers known by a digest in `wanted` whose unpacking has
        finished, by each digest they are known by (`_known_as`): one a pull still
        writes is flagged incomplete until containers-storage has written the whole diff
        directory. A partial pull of containers-storage 1.43 clears the flag, and saves
        the record, before it writes the table of contents its members are read from:
        until then, not finished. Asked again and again while a pull runs, so only the
        wanted layers' files are looked for."""
        _, by_id = self._records(images=False)
        return {
            digest: layer
            for layer in by_id.values()
            if not _incomplete(layer)
            and wanted.intersection(_known_as(layer))
            and any(path.exists() for path in self._member_files(str(layer["id"])))
            for digest in _known_as(layer)
        }

    def complete_layer(self, layer: dict[str, Any]) -> StoredLayer:
        """A record of `complete_layers`, once its member names have passed the rules."""
        return self._stored_layer(layer)

    def layer_markers(self, layer_id: str) -> LayerMarkers:
        """The layer's markers, as its members give them (member_markers.py), once its
        member names have passed the rules the blob path applies."""
        return read_markers(self._members(layer_id))

    def _members(self, layer_id: str) -> Iterator[Member]:
        """The layer's tar members, in order (layer_members.py): from its tar-split data,
        or, for a layer pulled partially (which containers-storage 1.43 keeps none of),
        from the table of contents of the zstd:chunked blob, which lists the same."""
        path, toc = self._member_files(layer_id)
        if not path.exists() and toc.exists():
            try:
                document = json.loads(toc.read_bytes())
                entries = document["entries"] if isinstance(document, dict) else None
                if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                    raise ValueError("no list of entries")
            except (OSError, ValueError, KeyError) as err:
                raise BootcError(
                    f"Reading the table of contents of layer {layer_id}: {err}"
                ) from None
            yield from toc_members(entries)
            return
        try:
            yield from tar_split_members(path)
        except (OSError, ValueError, EOFError, zlib.error) as err:
            # Data containers-storage did not write: not gzip, or not its entries.
            raise BootcError(f"Reading the tar-split data of layer {layer_id}: {err}") from None

    def _member_files(self, layer_id: str) -> tuple[Path, Path]:
        """Where the layer's members are listed: its tar-split data, and the table of
        contents of a layer pulled partially."""
        layers = self.root / "overlay-layers"
        return layers / f"{layer_id}.tar-split.gz", layers / layer_id / _big_data_file(_TOC_KEY)

    def mount(self, name: str) -> Path:
        """Mount the image read-only with the kernel's overlayfs and return where."""
        out = self.podman("image", "mount", name).stdout
        return Path(out.decode().strip())

    def unmount(self, name: str) -> None:
        self.podman("image", "unmount", "--force", name)

    def remove(self, name: str) -> None:
        self.podman("image", "rm", "--force", name)

    def reset(self, *, check: bool = True) -> None:
        """Remove everything this storage holds, mounts included, and its runroot."""
        self.podman("system", "reset", "--force", check=check)
        shutil.rmtree(self.runroot, ignore_errors=True)
