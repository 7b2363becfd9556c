"""A containers-storage root (overlay driver) driven through skopeo and podman.

bootc's own storage, the scratch storage of `internals flatten` and the kernel
oracle of the tests are all one of these: a root, a runroot kept outside it, and
the transport string and environment that point skopeo and podman at that pair
instead of the host's store.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError, error_context
from pybootc.layers.paths import split_member_name
from pybootc.oci.sigpolicy import policy_options

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


@dataclass(frozen=True)
class StoredLayer:
    """One layer of an image in the storage: the digest of the blob it was pulled from,
    and its overlay diff directory."""

    digest: str
    diff_dir: Path


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

    def podman_env(self) -> dict[str, str]:
        """The environment that points podman at this storage.

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
        (default /var/tmp), where a killed pull leaves them."""
        staging = ["--tmpdir", str(tmpdir)] if tmpdir is not None else []
        argv = ["skopeo", *policy_options(), *staging, "copy", "--quiet", *extra]
        tools.run([*argv, source, self.reference(name)])

    def stored_blob_digests(self) -> set[str]:
        """Digests of the layer blobs this storage has unpacked: a pull skips them."""
        try:
            layers = json.loads((self.root / "overlay-layers/layers.json").read_bytes())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as err:
            raise BootcError(f"Reading the metadata of {self.root}: {err}") from None
        return {str(d) for layer in layers if (d := layer.get("compressed-diff-digest"))}

    def _layers(self, name: str) -> list[dict[str, object]]:
        """The image's layer records (layers.json), lowest layer first.

        Read from the storage's own metadata (images.json, layers.json), which
        containers-storage replaces atomically: starting podman to ask costs more
        than the rest of flattening a small image.
        """
        try:
            images = json.loads((self.root / "overlay-images/images.json").read_bytes())
            layers = json.loads((self.root / "overlay-layers/layers.json").read_bytes())
        except (OSError, ValueError) as err:
            raise BootcError(f"Reading the metadata of {self.root}: {err}") from None
        image = next((i for i in images if name in i.get("names", ()) or i["id"] == name), None)
        if image is None:
            raise BootcError(f"No image {name} in {self.root}")
        by_id = {layer["id"]: layer for layer in layers}
        chain: list[dict[str, object]] = []
        layer_id = image.get("layer")
        while layer_id:
            chain.append(by_id.get(layer_id, {"id": layer_id}))
            layer_id = by_id.get(layer_id, {}).get("parent")
        if not chain:
            raise BootcError(f"Image {name} has no layers")
        return chain[::-1]

    def image_layers(self, name: str) -> list[StoredLayer]:
        """The image's layers, lowest first, once every member name of them has passed
        the rules the blob path applies.

        containers-storage cleans a name such as `../x` into `x` as it unpacks, so the
        diff directory cannot show that the layer tried to escape; the tar-split data
        it keeps of each layer has the names as the layer's tar stream gave them.
        """
        found = []
        for layer in self._layers(name):
            # Named as the blob path names it: by the digest of the blob it came from.
            digest = str(layer.get("compressed-diff-digest") or layer.get("diff-digest"))
            with error_context(f"Layer {digest}"):
                for member in self._member_names(str(layer["id"])):
                    split_member_name(member)
            found.append(StoredLayer(digest, self.root / "overlay" / str(layer["id"]) / "diff"))
        return found

    def layer_diff_dirs(self, name: str) -> list[Path]:
        """The image's overlay diff directories, lowest layer first (`image_layers`)."""
        return [layer.diff_dir for layer in self.image_layers(name)]

    def _member_names(self, layer_id: str) -> Iterator[str]:
        path = self.root / "overlay-layers" / f"{layer_id}.tar-split.gz"
        try:
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                for line in lines:
                    entry = json.loads(line)
                    if entry.get("type") != 1:
                        continue
                    raw = entry.get("name_raw")
                    if raw:
                        yield base64.b64decode(raw).decode(errors="surrogateescape")
                    else:
                        yield str(entry.get("name", ""))
        except (OSError, ValueError, EOFError) as err:
            raise BootcError(f"Reading the tar-split data of layer {layer_id}: {err}") from None

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
