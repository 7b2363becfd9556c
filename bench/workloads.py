"""The benchmark's images, built once and kept under bench/cache/.

Each workload is an OCI layout tagged `bench`. A layout is reused while the
recipe that built it is unchanged; it is built in a scratch directory and moved
into place only when complete, so an interrupted build is never taken as cached.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import rootfs
import smallfiles

TAG = "bench"


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    layout: Path

    @property
    def oci_ref(self) -> str:
        """The image for skopeo and for `bootc internals flatten`."""
        return f"oci:{self.layout}:{TAG}"

    @property
    def umoci_ref(self) -> str:
        return f"{self.layout}:{TAG}"

    def layer_sizes(self) -> list[int]:
        """Compressed layer sizes, lowest first."""
        index = json.loads((self.layout / "index.json").read_text())
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.loads((self.layout / "blobs" / "sha256" / digest).read_text())
        return [int(layer["size"]) for layer in manifest["layers"]]


def _cached(
    cache: Path, name: str, recipe: str, build: Callable[[Path], None], log: Callable[[str], None]
) -> Path:
    """The layout for `name`, built by `build(scratch_layout)` unless cached for `recipe`."""
    home = cache / name
    stamp = home / "recipe"
    layout = home / "layout"
    if stamp.exists() and stamp.read_text() == recipe and (layout / "index.json").exists():
        return layout
    log(f"Building workload {name} (cached afterwards in {home})")
    scratch = cache / f".{name}.building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    build(scratch / "layout")
    (scratch / "recipe").write_text(recipe)
    shutil.rmtree(home, ignore_errors=True)
    scratch.rename(home)
    return layout


def debian_minbase(cache: Path, work: Path, log: Callable[[str], None]) -> Workload:
    tarball = cache / f"debian-{rootfs.SUITE}-minbase.tar"

    def build(layout: Path) -> None:
        if not tarball.exists():
            log(f"Bootstrapping {rootfs.SUITE} minbase with mmdebstrap into {tarball}")
            rootfs.build_tarball(tarball)
        tree = work / "rootfs-tree"
        shutil.rmtree(tree, ignore_errors=True)
        rootfs.unpack_tarball(tarball, tree)
        try:
            rootfs.build_layout(tree, layout, TAG)
        finally:
            shutil.rmtree(tree, ignore_errors=True)

    layout = _cached(cache, "debian-minbase", rootfs.RECIPE, build, log)
    return Workload(
        "debian-minbase",
        f"Debian {rootfs.SUITE} minbase, 4 layers: split by path, then rewrites, "
        "whiteouts and opaque directories",
        layout,
    )


def small_files(cache: Path, work: Path, log: Callable[[str], None]) -> Workload:
    layout = _cached(
        cache,
        "small-files",
        smallfiles.RECIPE,
        lambda out: smallfiles.build_layout(out, TAG),
        log,
    )
    count = smallfiles.DIRECTORIES * smallfiles.FILES_PER_DIRECTORY
    return Workload(
        "small-files",
        f"{count:,} files of 0-{smallfiles.MAX_SIZE} bytes in "
        f"{smallfiles.DIRECTORIES:,} directories, 2 layers",
        layout,
    )


WORKLOADS: dict[str, Callable[[Path, Path, Callable[[str], None]], Workload]] = {
    "debian-minbase": debian_minbase,
    "small-files": small_files,
}
