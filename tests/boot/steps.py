"""Steps of the boot tests: a disk with v1 installed, one boot with one agent step, and
reading what the guest said. Phases are timed and the times printed as they happen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.boot.agent_disk import StepOutput, make_agent_disk, make_images_disk, read_step_output
from tests.boot.guest_image import GuestImages, build_guest_images
from tests.boot.host_command import run
from tests.boot.loader import BootResult, boot

DISK_MB = 5 * 1024
BOOT_TIMEOUT = 300
# An in-guest switch under TCG pulls and commits a ~450 MB image: minutes, not seconds.
SWITCH_TIMEOUT = 900
TIMINGS: dict[str, float] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time one phase; the times are printed as they happen and summed up at the end."""
    started = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = time.monotonic() - started
        print(f"[boot phase] {name}: {TIMINGS[name]:.1f} s", file=sys.stderr)


@contextmanager
def guest_images(release: str) -> Iterator[GuestImages]:
    """The guest images of `release` in a layout of this session's own (the base layer in
    it a hard link to the cache), removed afterwards."""
    layout = Path(tempfile.mkdtemp(prefix=f"pybootc-guest-{release}-", dir="/var/tmp"))
    try:
        with phase(f"guest images for {release} (cached base + wheel layer)"):
            images = build_guest_images(release, layout / "layout")
        yield images
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def install_v1(
    images: GuestImages,
    workdir: Path,
    *,
    backend: str = "ostree",
    follow: str | None = None,
) -> Path:
    """A fresh 5 GiB sparse disk image with v1 installed by `bootc install to-disk
    --via-loopback`; `follow` is the image the guest then upgrades from."""
    disk = workdir / "disk.img"
    run(["truncate", "-s", f"{DISK_MB}M", disk], timeout=30)
    target = ["--target-imgref", follow] if follow else []
    with phase(f"install to-disk v1 ({backend} backend)"):
        run(
            [
                sys.executable,
                "-m",
                "pybootc",
                "install",
                "to-disk",
                "--via-loopback",
                "--quiet",
                "--backend",
                backend,
                "--source-imgref",
                images.v1,
                *target,
                "--karg",
                "console=ttyS0",
                disk,
            ],
            timeout=600,
            capture=True,
        )
    return disk


def images_disk(image: Path, images: GuestImages, tags: Mapping[str, str]) -> Path:
    """A disk labelled `images` with the guest layout at /layout, where each tag in `tags`
    names the image of another tag: how a registry's tag moves to a new build."""
    layout = image.with_suffix(".layout")
    shutil.copytree(images.layout, layout, copy_function=os.link)
    index = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    for tag, source in tags.items():
        moved = {**by_tag[source], "annotations": {"org.opencontainers.image.ref.name": tag}}
        index["manifests"].append(moved)
    (layout / "index.json").unlink()
    (layout / "index.json").write_text(json.dumps(index))
    try:
        return make_images_disk(image, layout)
    finally:
        shutil.rmtree(layout)


STATUS_STEP = """
cat /proc/cmdline > "$OUT/cmdline"
if [ -e /run/ostree-booted ]; then touch "$OUT/ostree-booted"; fi
cat /usr/share/pybootc-test/version > "$OUT/version"
bootc status --format json > "$OUT/status.json"
"""


def boot_step(
    disk: Path,
    workdir: Path,
    step: str,
    name: str,
    *,
    entry: int = 0,
    timeout: float = BOOT_TIMEOUT,
    extra_disks: tuple[Path, ...] = (),
) -> tuple[BootResult, StepOutput]:
    # The name goes into qemu -drive options, where a comma would split it.
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
    agent = make_agent_disk(workdir / f"agent-{slug}.img", step)
    with phase(name):
        result = boot(
            disk,
            agent,
            entry,
            timeout,
            extra_disks=extra_disks,
            console_log=workdir / f"console-{slug}.log",
        )
    if result.agent_started is not None:
        TIMINGS[f"{name}: guest uptime at agent start"] = result.agent_started
        if result.step_ended is not None:
            TIMINGS[f"{name}: step"] = result.step_ended - result.agent_started
    output = read_step_output(agent)
    # The step's own log, then what the console showed around it.
    assert output.rc == 0, (
        f"step {name} failed ({output.rc}):\n{output.log}"
        f"\nlast {len(result.console_tail)} console lines:\n" + "\n".join(result.console_tail)
    )
    return result, output


def status_of(output: StepOutput, name: str = "status.json") -> dict[str, Any]:
    status: dict[str, Any] = json.loads(output.text(name))["status"]
    return status


def image_of(deployment: dict[str, Any] | None) -> tuple[str, str]:
    """(image reference, version) of a status deployment entry."""
    assert deployment is not None
    image = deployment["image"]
    return image["image"]["image"], image["version"]
