"""A soft reboot into a staged deployment, on a guest that can do one.

Neither Debian 12 nor 13 can: bookworm has systemd 252 (254 brought soft-reboot), and
trixie's libostree 2025.2 cannot prepare one (2025.3 brought
`ostree_sysroot_deployment_set_soft_reboot`). Debian forky has both, so this test boots a
forky guest, whatever PYBOOTC_BOOT_RELEASE says for the scenario.

libostree soft-reboots only into a deployment whose root composefs mounts, so the stream
the guest follows moves to v2-composefs: v2 with `[composefs] enabled = yes`.

A soft reboot keeps the kernel and qemu running: systemd stops userspace, the staged
deployment is finalized on the way down, and the new userspace starts the test agent a
second time. So the step runs twice, and knows which run it is by what the first run left
on the agent disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.boot.guest_image import GuestImages
from tests.boot.loader import read_entries
from tests.boot.steps import (
    SWITCH_TIMEOUT,
    boot_step,
    guest_images,
    image_of,
    images_disk,
    install_v1,
)

pytestmark = pytest.mark.boot

RELEASE = "forky"
STREAM = "ostree-unverified-image:oci:/run/images/layout:stream"

STEP = """
if [ ! -e "$OUT/first/done" ]; then
    mkdir -p "$OUT/first"
    cat /proc/sys/kernel/random/boot_id > "$OUT/first/boot_id"
    systemctl show -P SoftRebootsCount > "$OUT/first/soft-reboots"
    mkdir -p /run/images
    mount -o ro /dev/disk/by-label/images /run/images
    # Plain v2 has no composefs: it is staged, but a soft reboot into it is refused.
    bootc switch --quiet --apply --soft-reboot=required --transport oci /run/images/layout:v2 \
        > "$OUT/first/plain.txt" 2>&1 || echo $? > "$OUT/first/plain-rc"
    bootc status --format json > "$OUT/first/plain.json"
    # Switching back to the stream (v2-composefs) replaces it. (An upgrade would not:
    # it follows what is staged, as upstream's does.)
    bootc switch --quiet --transport oci /run/images/layout:stream
    bootc status --format json > "$OUT/first/staged.json"
    touch "$OUT/first/done"
    then_ none
    # Returns only when the soft reboot stops it, as a full reboot does.
    bootc upgrade --apply --soft-reboot=required > "$OUT/first/apply.txt" 2>&1 || true
else
    cat /proc/sys/kernel/random/boot_id > "$OUT/boot_id"
    systemctl show -P SoftRebootsCount > "$OUT/soft-reboots"
    cat /usr/share/pybootc-test/version > "$OUT/version"
    bootc status --format json > "$OUT/status.json"
fi
"""


@pytest.fixture(scope="module")
def forky_images() -> Iterator[GuestImages]:
    with guest_images(RELEASE) as found:
        yield found


def status(raw: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(raw)["status"]
    return found


def test_a_staged_update_is_entered_by_a_soft_reboot(
    forky_images: GuestImages, workdir: Path
) -> None:
    disk = install_v1(forky_images, workdir, follow=STREAM)
    at_v2 = images_disk(workdir / "images-v2.img", forky_images, {"stream": "v2-composefs"})
    _, out = boot_step(
        disk,
        workdir,
        STEP,
        "forky: v1, upgrade to v2, upgrade --apply --soft-reboot=required",
        timeout=SWITCH_TIMEOUT,
        extra_disks=(at_v2,),
    )
    plain = status(out.text("first/plain.json"))
    assert image_of(plain["staged"])[1] == "2" and plain["staged"]["softRebootCapable"] is False
    assert out.text("first/plain-rc") == "1\n"
    # As upstream: staged first, then refused, so what was staged is said before the error.
    assert out.text("first/plain.txt").startswith("Queued for next boot: ")
    assert out.text("first/plain.txt").endswith(
        "\nerror: Soft reboot was required but staged deployment is not soft-reboot capable\n"
    )
    staged = status(out.text("first/staged.json"))
    assert image_of(staged["booted"])[1] == "1"
    assert image_of(staged["staged"])[1] == "2-composefs"
    # v2 has v1's kernel, initramfs and kargs, and composefs on: no firmware needed.
    assert staged["staged"]["softRebootCapable"] is True
    applied = out.text("first/apply.txt")
    assert applied.startswith("No changes in "), applied  # upstream's pull, of what it has
    assert applied.split("\n", 1)[1].startswith(
        "Staged update present, not changed\n"
        "Staged deployment is soft-reboot capable, preparing for soft-reboot...\n"
    ), applied

    # The second run of the agent: the same kernel (boot id), one soft reboot, v2 booted.
    assert out.text("boot_id") == out.text("first/boot_id")
    assert out.text("first/soft-reboots") == "0\n" and out.text("soft-reboots") == "1\n"
    assert out.text("version") == "2\n"
    after = status(out.text("status.json"))
    assert image_of(after["booted"])[1] == "2-composefs" and image_of(after["rollback"])[1] == "1"
    # v1 has no composefs: libostree could not prepare a soft reboot back into it.
    assert after["rollback"]["softRebootCapable"] is False
    assert after["staged"] is None
    # Staged deployments get their boot entry when finalized, on the way down: v2 has one.
    assert len(read_entries(disk)) == 2
