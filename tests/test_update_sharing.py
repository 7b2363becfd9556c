"""Updates keep the deployments sharing their files: after any number of updates every
file below a deployment's /usr is a hardlink of the repo's object, and the disk used
grows by about what each update changed, not by an image per update."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest

from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, file, layer
from tests.backend_support import bootc, install, ok

UPDATES = 3
# Each update: one layer of this much data that does not compress.
CHANGED = 256 << 10


def object_inodes(sysroot: Path) -> set[int]:
    objects = sysroot / "ostree/repo/objects"
    return {os.lstat(os.path.join(d, n)).st_ino for d, _, names in os.walk(objects) for n in names}


def unshared_files(sysroot: Path) -> list[str]:
    """Regular files below any deployment's /usr that are no object of the repo."""
    inodes = object_inodes(sysroot)
    lost = []
    for deployment in Sysroot.open(sysroot).deployments():
        usr = deployment.deployment_path / "usr"
        for dirpath, _, names in os.walk(usr):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                if (
                    os.path.isfile(os.path.join(dirpath, name))
                    and not os.path.islink(os.path.join(dirpath, name))
                    and st.st_ino not in inodes
                ):
                    lost.append(os.path.relpath(os.path.join(dirpath, name), sysroot))
    return lost


def disk_used(path: Path) -> int:
    """Bytes of the blocks the files below `path` use, each inode once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, names in os.walk(path):
        for name in (*dirnames, *names):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_updates_keep_deployments_sharing_objects(
    tmp_path: Path, target: Path, backend: str
) -> None:
    layout = OciLayout(tmp_path / "oci")
    # A base that dwarfs each update, so a copied image would show.
    bulk = layer(
        *(file(f"usr/share/bulk/{n}", random.Random(n).randbytes(64 << 10)) for n in range(48))
    )
    base = sample_image("1", extra=(bulk,))
    layout.add_image("os", base)
    ok(install(target, layout.ref("os"), backend=backend))
    assert unshared_files(target) == []
    used = [disk_used(target / "ostree")]
    for n in range(1, UPDATES + 1):
        # The same base again (which the new layer may even repeat a file of), plus one
        # new layer.
        change = layer(
            file(f"usr/share/update-{n}", random.Random(f"update-{n}").randbytes(CHANGED)),
            file("usr/share/bulk/0", random.Random(0).randbytes(64 << 10)),
        )
        layout.add_image("os", sample_image("1", extra=(bulk, change)))
        before = Sysroot.open(target).deployments()[0].checksum
        ok(bootc("upgrade", sysroot=target))
        assert Sysroot.open(target).deployments()[0].checksum != before, f"update {n}"
        assert unshared_files(target) == [], f"after update {n}"
        used.append(disk_used(target / "ostree"))
    growth = [after - before for before, after in itertools.pairwise(used)]
    image = used[0]
    for step in growth:
        # About the changed layer (its objects, kept in two stores for the container
        # backend, and a new deployment's directories), nowhere near an image.
        assert step < 4 * CHANGED + (1 << 20), (growth, image)
