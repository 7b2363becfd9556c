"""Builds the bootable Debian guest images (v1, v2, v3) that the qemu boot tests install.

The base tree comes from mmdebstrap once per recipe and is kept as one gzip layer blob,
keyed by a hash of the recipe. pybootc's wheel is a separate small layer on top, rebuilt on
every call, so editing pybootc never re-runs mmdebstrap. v2 and v3 add one small layer each.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc.stores.bootc_storage import STORAGE_SUBDIR
from tests.boot.guest_recipe import (
    AGENT_SCRIPT,
    AGENT_UNIT,
    BOOTC_SCRIPT,
    CUSTOMIZE_HOOK,
    JOURNALD_CONSOLE,
    Recipe,
    recipe_for,
)
from tests.boot.host_command import BootTestError, run
from tests.boot.oci_layers import (
    BlobLayer,
    Member,
    member,
    put_image,
    put_layer,
    tar_tree,
    write_index,
)

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_CACHE = Path("/var/tmp/pybootc-guest")
TAGS = ("v1", "v2", "v2.1", "v2-composefs", "v3")
# What libostree needs to soft-reboot into a deployment: its root mounted by composefs.
COMPOSEFS_ON = b"[composefs]\nenabled = yes\n"
# bootc's storage as a booted host sees it (SYSROOT/ostree/bootc/storage).
BOOTC_STORAGE_LINK = f"/sysroot/{STORAGE_SUBDIR}"


@dataclass(frozen=True)
class GuestImages:
    """The OCI layout holding the three guest images, and their skopeo references."""

    release: str
    layout: Path
    kernel_version: str
    v1: str
    v2: str
    v3: str

    def ref(self, tag: str) -> str:
        return f"oci:{self.layout}:{tag}"


@dataclass(frozen=True)
class BaseTree:
    """The cached base: its layer, the broken initramfs for v3, and facts read from the tree."""

    layer: BlobLayer
    broken_initramfs: Path
    kernel_version: str
    python_version: str
    os_release: str


def build_guest_images(release: str, layout: Path, cache: Path = DEFAULT_CACHE) -> GuestImages:
    """Build (or reuse) the base tree for `release`, then write the v1/v2/v3 layout afresh
    at `layout`: a directory of the caller's own, as another test run may be reading the
    layout it wrote while this one writes its own."""
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        base = _cached_base(recipe_for(release), cache)
    return _write_layout(release, base, layout)


def base_layer(release: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The cached base tree of `release` as one gzip tar, built on first use: also a
    Debian tree to run another release's tools in (tests/toolbox.py)."""
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        return _cached_base(recipe_for(release), cache).layer.path


# --- the cached base layer -------------------------------------------------------------


def _cached_base(recipe: Recipe, cache: Path) -> BaseTree:
    directory = cache / f"base-{recipe.release}-{recipe.key()}"
    if not (directory / "base.json").exists():
        partial = directory.with_name(directory.name + ".partial")
        _remove_tree(partial)
        partial.mkdir()
        _build_base(recipe, partial)
        # Bases of older recipes are 200+ MB each and nothing reads them any more.
        for old in cache.glob(f"base-{recipe.release}-*"):
            if old != partial:
                _remove_tree(old)
        partial.rename(directory)
    meta = json.loads((directory / "base.json").read_text())
    return BaseTree(
        layer=BlobLayer(directory / "layer.tar.gz", meta["digest"], meta["size"], meta["diff_id"]),
        broken_initramfs=directory / "broken-initramfs.img",
        kernel_version=meta["kernel_version"],
        python_version=meta["python_version"],
        os_release=meta["os_release"],
    )


def _build_base(recipe: Recipe, out: Path) -> None:
    rootfs = out / "rootfs"
    hook = out / "customize.sh"
    hook.write_text(CUSTOMIZE_HOOK)
    run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=apt",
            "--format=directory",
            '--aptopt=APT::Install-Recommends "false"',
            # A testing suite's Release file is valid for a week only, and a mirror or
            # snapshot that lags behind would refuse it; the guest is a test tree.
            '--aptopt=Acquire::Check-Valid-Until "false"',
            "--include=" + ",".join(recipe.packages),
            f'--customize-hook=sh {hook} "$1"',
            recipe.release,
            rootfs,
            *recipe.sources,
        ],
        timeout=1800,
        capture=True,
        env={"SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)},
    )
    (rootfs / "broken-initramfs.img").rename(out / "broken-initramfs.img")
    kernels = sorted(p.name for p in (rootfs / "usr/lib/modules").iterdir())
    if len(kernels) != 1:
        raise BootTestError(f"expected one kernel in the guest tree, found {kernels}")
    python = os.readlink(rootfs / "usr/bin/python3").removeprefix("python")
    _finish_tree(rootfs)
    _install_wheels(_download_isal(recipe, out / "wheels", python), rootfs, python)
    os_release = (rootfs / "usr/lib/os-release").read_text()
    layer = tar_tree(rootfs, out / "layer.tar.gz")
    _remove_tree(rootfs)
    meta = {
        "digest": layer.digest,
        "size": layer.size,
        "diff_id": layer.diff_id,
        "kernel_version": kernels[0],
        "python_version": python,
        "os_release": os_release,
    }
    (out / "base.json").write_text(json.dumps(meta, indent=2) + "\n")


def _finish_tree(rootfs: Path) -> None:
    """What a bootc base image carries besides packages, plus the test agent."""
    (rootfs / "sysroot").mkdir(exist_ok=True)
    ostree = rootfs / "ostree"
    if not ostree.is_symlink():
        ostree.symlink_to("sysroot/ostree")
    # Empty, not absent: systemd then treats the first boot of each deployment as first boot.
    (rootfs / "etc/machine-id").write_text("")
    os_release = rootfs / "usr/lib/os-release"
    os_release.write_text(os_release.read_text() + 'IMAGE_ID="pybootc-test"\nIMAGE_VERSION="1"\n')
    _write(rootfs / "usr/share/pybootc-test/version", "1\n")
    _write(rootfs / "usr/libexec/pybootc-test-agent", AGENT_SCRIPT, mode=0o755)
    units = rootfs / "usr/lib/systemd/system"
    _write(units / "pybootc-test-agent.service", AGENT_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    link = wants / "pybootc-test-agent.service"
    if not link.is_symlink():
        link.symlink_to("../pybootc-test-agent.service")
    _write(rootfs / "usr/lib/systemd/journald.conf.d/50-pybootc-console.conf", JOURNALD_CONSOLE)


def _download_isal(recipe: Recipe, wheels: Path, python: str) -> list[Path]:
    wheels.mkdir(exist_ok=True)
    run(
        [
            VENV_PYTHON,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation=cp",
            f"--python-version={python}",
            "--platform=manylinux2014_x86_64",
            "--dest",
            wheels,
            recipe.isal,
        ],
        timeout=300,
        capture=True,
    )
    return sorted(wheels.glob("*.whl"))


def _install_wheels(wheels: Sequence[Path], rootfs: Path, python: str) -> None:
    """Install wheels for the guest's python into its dist-packages, without its pip."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybootc-wheels-") as temp:
        stage = Path(temp) / "site"
        run(
            [
                VENV_PYTHON,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-compile",
                "--no-index",
                "--only-binary=:all:",
                "--implementation=cp",
                f"--python-version={python}",
                "--platform=manylinux2014_x86_64",
                "--target",
                stage,
                *wheels,
            ],
            timeout=300,
            capture=True,
        )
        # Console scripts carry the host venv's shebang; the image writes its own.
        shutil.rmtree(stage / "bin", ignore_errors=True)
        shutil.copytree(stage, rootfs / "usr/lib/python3/dist-packages", dirs_exist_ok=True)


# --- the layout: base + pybootc wheel, then the v2 and v3 layers -----------------------


def _write_layout(release: str, base: BaseTree, layout: Path) -> GuestImages:
    partial = layout.with_name(layout.name + ".partial")
    _remove_tree(partial)
    blobs = partial / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    base_blob = blobs / base.layer.digest.removeprefix("sha256:")
    os.link(base.layer.path, base_blob)
    layers = [BlobLayer(base_blob, base.layer.digest, base.layer.size, base.layer.diff_id)]
    layers.append(put_layer(blobs, _wheel_members(base.python_version)))
    manifests = [put_image(blobs, "v1", layers)]
    layers.append(put_layer(blobs, _v2_members(base.os_release)))
    manifests.append(put_image(blobs, "v2", layers))
    # An update of v2: one more small layer on top, as a rebuild of v2 would add.
    update = put_layer(blobs, [member("usr/share/pybootc-test/version", b"2.1\n", 0o644)])
    manifests.append(put_image(blobs, "v2.1", [*layers, update]))
    composefs = put_layer(blobs, [member("usr/lib/ostree/prepare-root.conf", COMPOSEFS_ON, 0o644)])
    manifests.append(put_image(blobs, "v2-composefs", [*layers, composefs]))
    initramfs = f"usr/lib/modules/{base.kernel_version}/initramfs.img"
    broken = base.broken_initramfs.read_bytes()
    layers.append(put_layer(blobs, [member(initramfs, broken)]))
    manifests.append(put_image(blobs, "v3", layers))
    write_index(partial, manifests)
    _remove_tree(layout)
    partial.rename(layout)
    refs = {tag: f"oci:{layout}:{tag}" for tag in TAGS}
    return GuestImages(
        release=release,
        layout=layout,
        kernel_version=base.kernel_version,
        v1=refs["v1"],
        v2=refs["v2"],
        v3=refs["v3"],
    )


def _wheel_members(python: str) -> list[Member]:
    """pybootc, as built from this checkout, installed for the guest's python3."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybootc-wheel-") as temp:
        work = Path(temp)
        wheel = _build_wheel(work)
        site = work / "root/usr/lib/python3/dist-packages"
        _install_wheels([wheel], work / "root", python)
        members = [member("usr/bin/bootc", BOOTC_SCRIPT.encode(), 0o755)]
        # Where a booted host finds bootc's storage, as upstream's package links it.
        members.append(Member("usr/lib/bootc/storage", None, 0o777, BOOTC_STORAGE_LINK))
        # The units pybootc ships, where a package would put them.
        for unit in sorted((ROOT / "systemd").glob("bootc-*")):
            members.append(member(f"usr/lib/systemd/system/{unit.name}", unit.read_bytes(), 0o644))
        for path in sorted(site.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                name = os.fspath(path.relative_to(work / "root"))
                members.append(member(name, path.read_bytes(), 0o644))
        return members


def _build_wheel(work: Path) -> Path:
    """Build pybootc's wheel from a copy of the sources, so the checkout gets no build/."""
    source = work / "source"
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source / "pyproject.toml")
    shutil.copytree(
        ROOT / "pybootc", source / "pybootc", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = work / "dist"
    run(
        [
            VENV_PYTHON,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            # Isolated: the venv's setuptools has no bdist_wheel; pip caches the download.
            "--wheel-dir",
            out,
            source,
        ],
        timeout=300,
        capture=True,
    )
    wheels = sorted(out.glob("pybootc-*.whl"))
    if len(wheels) != 1:
        raise BootTestError(f"expected one pybootc wheel, found {wheels}")
    return wheels[0]


def _v2_members(os_release: str) -> list[Member]:
    """v2's change: its version file, and os-release saying version 2."""
    replaced = {"VERSION_ID": None, "IMAGE_VERSION": '"2"'}
    lines = []
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key in replaced:
            new = replaced[key] or '"' + value.strip('"') + '-pybootc2"'
            lines.append(f"{key}={new}")
        else:
            lines.append(line)
    return [
        member("usr/share/pybootc-test/version", b"2\n"),
        member("usr/lib/os-release", ("\n".join(lines) + "\n").encode()),
    ]


# --- small file-system helpers ---------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """One builder per cache at a time: two pytest workers must not both run mmdebstrap."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


if __name__ == "__main__":
    import sys
    import time

    started = time.monotonic()
    release = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
    images = build_guest_images(release, DEFAULT_CACHE / f"layout-{release}")
    print(images)
    print(f"{time.monotonic() - started:.1f} s")
