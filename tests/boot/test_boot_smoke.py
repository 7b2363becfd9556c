"""Boots pybootc-installed disks in qemu: install, boot, switch, reboot, and a failed boot.

Each test installs v1 on a fresh ext4 disk image from the host, then boots it through the
harness's BLS loader with a step for the in-guest agent. Run as root: `pytest tests/boot -s`
(PYBOOTC_BOOT_RELEASE=trixie for Debian 13; PYBOOTC_BOOT_KEEP=1 keeps disks and console logs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.boot.agent_disk import make_agent_disk, make_images_disk
from tests.boot.disk import mounted
from tests.boot.guest_image import GuestImages
from tests.boot.host_command import run
from tests.boot.loader import BootFailed, boot, read_entries
from tests.boot.steps import (
    BOOT_TIMEOUT,
    STATUS_STEP,
    SWITCH_TIMEOUT,
    boot_step,
    image_of,
    install_v1,
    phase,
    status_of,
)

# `make test` runs the boot tests in a pytest of their own, one at a time.
pytestmark = pytest.mark.boot


def test_installed_disk_boots_its_default_entry_with_ostree(
    images: GuestImages, workdir: Path
) -> None:
    disk = install_v1(images, workdir)
    entries = read_entries(disk)
    assert [e.version for e in entries] == ["1"]

    _, output = boot_step(disk, workdir, STATUS_STEP, "boot v1 to agent")

    assert "ostree-booted" in output.files
    assert "ostree=/ostree/boot." in output.text("cmdline")
    assert output.text("version").strip() == "1"
    status = status_of(output)
    assert image_of(status["booted"]) == (images.v1.removeprefix("oci:"), "1")
    assert status["staged"] is None


SWITCH_STEP = """
mkdir -p /run/images
mount -o ro /dev/disk/by-label/images /run/images
bootc switch --quiet --transport oci /run/images/layout:v2
bootc status --format json > "$OUT/status-switched.json"
ls /run/ostree/ > "$OUT/run-ostree" || true
systemctl is-active ostree-finalize-staged.service > "$OUT/finalize-active" || true
then_ reboot
"""


def test_switch_in_guest_stages_v2_and_reboot_boots_it(images: GuestImages, workdir: Path) -> None:
    disk = install_v1(images, workdir)
    with phase("images disk (mkfs -d of the layout)"):
        images_disk = make_images_disk(workdir / "images.img", images.layout)

    _, switched = boot_step(
        disk,
        workdir,
        SWITCH_STEP,
        "boot v1 + switch to v2 + reboot",
        timeout=SWITCH_TIMEOUT,
        extra_disks=(images_disk,),
    )
    status = status_of(switched, "status-switched.json")
    assert image_of(status["booted"])[1] == "1"
    assert image_of(status["staged"]) == ("/run/images/layout:v2", "2")
    assert switched.text("finalize-active").strip() == "active"

    # The guest's shutdown (ostree-finalize-staged) wrote the entries this boot reads.
    entries = read_entries(disk)
    # libostree 2022.7 names them ostree-N-STATEROOT.conf, newer ones ostree-N.conf.
    assert [e.version for e in entries] == ["2", "1"]

    _, after = boot_step(disk, workdir, STATUS_STEP, "boot v2 to agent")
    assert after.text("version").strip() == "2"
    status = status_of(after)
    assert image_of(status["booted"]) == ("/run/images/layout:v2", "2")
    assert image_of(status["rollback"])[1] == "1"


def test_broken_default_entry_fails_and_the_previous_entry_still_boots(
    images: GuestImages, workdir: Path
) -> None:
    disk = install_v1(images, workdir)
    # Not booted, so the switch deploys v3 straight away as the default entry.
    with phase("host switch to v3 (not booted sysroot)"), mounted(disk, read_only=False) as root:
        run(
            [
                sys.executable,
                "-m",
                "pybootc",
                "--sysroot",
                root,
                "switch",
                "--quiet",
                "--transport",
                "oci",
                images.v3.removeprefix("oci:"),
            ],
            timeout=600,
            capture=True,
        )
    assert len(read_entries(disk)) == 2

    agent = make_agent_disk(workdir / "agent-v3.img", STATUS_STEP)
    with phase("boot v3 until it fails"), pytest.raises(BootFailed) as failed:
        boot(disk, agent, 0, BOOT_TIMEOUT, console_log=workdir / "console-v3.log")
    # The initramfs without the ostree module cannot set up the deployment's root.
    assert "ostree-prepare-root" not in (workdir / "console-v3.log").read_text(errors="replace")
    print(str(failed.value).splitlines()[0], file=sys.stderr)

    _, output = boot_step(disk, workdir, STATUS_STEP, "boot previous entry (v1)", entry=1)
    assert output.text("version").strip() == "1"
    assert image_of(status_of(output)["booted"])[1] == "1"
