"""Helpers for end-to-end tests of deployments: sysroots on tmpfs, images, state.

A sysroot lives on a tmpfs of its own, so libostree's freeze of the filesystem
holding /boot never reaches the machine's root filesystem.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybootc.ostree.repo import list_refs
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.ocibuild import ImageSpec, OciLayout, push
from pybootc.stores.bootc_storage import bootc_storage
from tests.support import Registry
from tests.sysroot_support import scratch_tmpfs

if TYPE_CHECKING:
    # Not at run time: the sigstore tests import this module in a chroot without pytest.
    import pytest

_repos = itertools.count()


@contextmanager
def empty_sysroot_dir(mountpoint: Path, size: str = "512m") -> Iterator[Path]:
    """An empty directory on a fresh tmpfs of `size` at `mountpoint`; bootc's storage
    in it is reset and its runroot removed afterwards."""
    with scratch_tmpfs(mountpoint, size) as mount:
        path = mount / "sysroot"
        path.mkdir()
        try:
            yield path
        finally:
            storage = bootc_storage(path)
            if storage.root.exists():
                storage.reset(check=False)
            shutil.rmtree(storage.runroot, ignore_errors=True)


def bootc(*args: str, sysroot: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--sysroot", str(sysroot)] if sysroot is not None else []
    return subprocess.run(
        [sys.executable, "-m", "pybootc", *prefix, *args],
        capture_output=True,
        text=True,
        check=False,
    )


def install(
    target: Path, image: str, *extra: str, backend: str = "container"
) -> subprocess.CompletedProcess[str]:
    """`bootc install to-filesystem` of `image` with `backend`."""
    return bootc(
        "install",
        "to-filesystem",
        "--backend",
        backend,
        "--source-imgref",
        image,
        *extra,
        str(target),
    )


def switch_oci(target: Path, layout: OciLayout, tag: str) -> subprocess.CompletedProcess[str]:
    """`bootc switch` of the sysroot at `target` to `tag` of an OCI layout."""
    return bootc("switch", "--transport", "oci", f"{layout.path}:{tag}", sysroot=target)


def layout_layer_digests(layout: OciLayout, tag: str) -> list[str]:
    """The layer digests of the layout's image `tag`, lowest first."""
    index = json.loads((layout.path / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    ]
    manifest = json.loads(layout.blob_path(entry["digest"]).read_text())
    return [str(d["digest"]) for d in manifest["layers"]]


def skopeo_in_front(bin_dir: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Put a skopeo on PATH, in `bin_dir`, that runs the shell `script`, where
    {real} stands for the real skopeo."""
    real = shutil.which("skopeo")
    assert real is not None
    bin_dir.mkdir()
    wrapper = bin_dir / "skopeo"
    wrapper.write_text("#!/bin/sh\n" + script.replace("{real}", real))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def recording_skopeo(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """An argv-recording skopeo in front of the real one (`skopeo_in_front`); what
    reads the argv of every call so far, one line each."""
    argv_log = bin_dir.parent / f"{bin_dir.name}-skopeo-argv"
    skopeo_in_front(bin_dir, monkeypatch, f'echo "$*" >> {argv_log}\nexec {{real}} "$@"\n')
    return lambda: argv_log.read_text().splitlines() if argv_log.exists() else []


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@dataclass(frozen=True)
class Published:
    """An image pushed to the test registry, and the layout it came from."""

    ref: str  # host/repo:tag, for --transport registry or docker://
    layout: OciLayout
    tag: str
    manifest_digest: str  # of the manifest pushed, whatever the layout holds later

    @property
    def docker(self) -> str:
        return f"docker://{self.ref}"

    def manifest(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.layout.blob_path(self.manifest_digest).read_bytes())
        return found


def publish(
    registry: Registry, workdir: Path, spec: ImageSpec, *, repo: str = "", tag: str = "latest"
) -> Published:
    """Write `spec` to an OCI layout and push it to the registry as repo:tag."""
    repo = repo or f"pybootc/os{next(_repos)}"
    layout = OciLayout(workdir / f"layout-{repo.replace('/', '-')}-{tag}")
    layout.add_image(tag, spec)
    ref = f"{registry.address}/{repo}:{tag}"
    # The registry gets the layout's own blobs: without this, skopeo may push a layer
    # as another compression of it that its host-wide blob info cache knows the
    # registry has (another test pushed it), and the manifest is no longer this one.
    push(layout.ref(tag), f"docker://{ref}", "--preserve-digests")
    index = json.loads((layout.path / "index.json").read_text())
    return Published(ref, layout, tag, str(index["manifests"][-1]["digest"]))


@dataclass(frozen=True)
class SysrootState:
    """Everything bad input must leave alone."""

    deployments: tuple[tuple[str, str], ...]
    refs: tuple[tuple[str, str], ...]
    images: tuple[str, ...]
    boot_entries: tuple[str, ...]


def state(path: Path) -> SysrootState:
    sysroot = Sysroot.open(path)
    storage = bootc_storage(path)
    images: list[str] = []
    if storage.root.exists():
        images = sorted(storage.podman("images", "-q", "--no-trunc").stdout.decode().split())
    return SysrootState(
        deployments=tuple(
            (d.checksum, json.dumps(d.origin, sort_keys=True)) for d in sysroot.deployments()
        ),
        refs=tuple(sorted(list_refs(sysroot.repo).items())),
        images=tuple(images),
        boot_entries=tuple(
            sorted(p.read_text() for p in (path / "boot/loader/entries").glob("*.conf"))
        ),
    )
