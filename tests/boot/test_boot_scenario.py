"""The booted-host life of a pybootc host, for each backend, asserted from inside the guest.

One disk goes through every boot in order: v1 switches to v2 and reboots; v2 keeps /etc
and /var, gets a transient /usr overlay, checks for, downloads and applies an update
(v2.1) with `--apply`; v2.1 queues and unqueues a rollback, then `rollback --apply
--soft-reboot=auto` reboots in full (neither Debian can soft-reboot);
v2 is brought back to v2.1 by bootc-fetch-apply-updates.timer, fired by hand; v2.1 switches to the
broken v3 with `--apply`, whose boot fails, so the harness boots the previous entry as
a loader's fallback does, and `rollback` makes that the default again.

The guest reads its images from a disk labelled `images` (no network); the tag
`stream` moves from v2 to v2.1 between boots, as a registry tag moves to a new build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.boot.agent_disk import StepOutput, make_agent_disk
from tests.boot.guest_image import GuestImages
from tests.boot.loader import BootFailed, boot, read_entries
from tests.boot.steps import (
    BOOT_TIMEOUT,
    STATUS_STEP,
    SWITCH_TIMEOUT,
    boot_step,
    image_of,
    images_disk,
    install_v1,
    phase,
)

# `make test` runs the boot tests in a pytest of their own, one at a time.
pytestmark = pytest.mark.boot

# Both backends, about 10 minutes each; PYBOOTC_BOOT_BACKENDS=ostree (say) boots fewer.
BACKENDS = os.environ.get("PYBOOTC_BOOT_BACKENDS", "ostree container").split()
STREAM = "/run/images/layout:stream"
# How pybootc prints the reference `--transport oci` makes of STREAM.
STREAM_REF = f"ostree-unverified-image:oci:{STREAM}"

# Why each release's guest refuses `--soft-reboot=required`.
SOFT_REBOOT_REFUSAL = {
    "bookworm": "systemd 252 has no soft-reboot (it needs 254 or newer)",
    "trixie": "libostree 2025.2 cannot prepare a soft reboot (it needs 2025.3 or newer)",
}
MOUNT_IMAGES = """
mkdir -p /run/images
mount -o ro /dev/disk/by-label/images /run/images
"""


def host_document(output: StepOutput, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(output.text(name))
    return found


def version(entry: dict[str, Any] | None) -> str:
    return image_of(entry)[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_host_boots_updates_itself_and_rolls_back(  # noqa: PLR0915 (one story, in order)
    images: GuestImages, workdir: Path, backend: str
) -> None:
    disk = install_v1(images, workdir, backend=backend)
    at_v2 = images_disk(workdir / "images-v2.img", images, {"stream": "v2"})
    at_v21 = images_disk(workdir / "images-v2.1.img", images, {"stream": "v2.1"})

    # 1-2. v1 is booted; /etc and /var are written to; a switch stages v2 (and the same
    # switch again finds it staged).
    _, out = boot_step(
        disk,
        workdir,
        MOUNT_IMAGES
        + STATUS_STEP
        + f"""
if touch /usr/pybootc-ro-test 2>/dev/null; then echo rw; else echo ro; fi > "$OUT/usr"
findmnt -no OPTIONS /sysroot > "$OUT/sysroot-mount"
bootc status --format json > "$OUT/v1.json"
bootc status --format humanreadable > "$OUT/v1.txt"
echo "edited on v1" > /etc/pybootc-test.conf
mkdir -p /var/lib/pybootc-test && echo kept > /var/lib/pybootc-test/state
bootc switch --quiet --transport oci {STREAM} > "$OUT/switch.txt"
bootc switch --quiet --transport oci {STREAM} > "$OUT/switch-again.txt"
findmnt -no OPTIONS /sysroot > "$OUT/sysroot-mount-after"
readlink /usr/lib/bootc/storage > "$OUT/bootc-storage-link"
ls /usr/lib/bootc/storage/ > "$OUT/bootc-storage-ls" 2>&1 || true
bootc status --format json > "$OUT/switched.json"
systemctl is-active ostree-finalize-staged.service > "$OUT/finalize-active" || true
then_ reboot
""",
        f"{backend}: v1, switch to v2, reboot",
        timeout=SWITCH_TIMEOUT,
        extra_disks=(at_v2,),
    )
    # ostree-prepare-root set up the deployment's root, with a read-only /usr.
    assert "ostree-booted" in out.files and "ostree=/ostree/boot." in out.text("cmdline")
    assert out.text("version") == "1\n" and out.text("usr") == "ro\n"
    # sysroot.readonly, as upstream installs: bootc writes in a mount namespace of its
    # own, and the host's /sysroot stays read-only.
    for mount in ("sysroot-mount", "sysroot-mount-after"):
        assert "ro" in out.text(mount).strip().split(","), out.text(mount)
    v1 = host_document(out, "v1.json")["status"]
    assert version(v1["booted"]) == "1" and v1["staged"] is None
    assert out.text("v1.txt").startswith("● Booted image: oci:")
    assert out.text("switch.txt").startswith(f"Queued for next boot: {STREAM_REF}")
    # The host follows what is staged: switching to it again changes nothing.
    assert out.text("switch-again.txt") == "Image specification is unchanged.\n"
    switched = host_document(out, "switched.json")["status"]
    assert version(switched["staged"]) == "2" and version(switched["booted"]) == "1"
    assert out.text("finalize-active") == "active\n"
    # bootc's storage, where tools written for bootc look for it on a booted host.
    assert out.text("bootc-storage-link") == "/sysroot/ostree/bootc/storage\n"
    if backend == "container":
        assert "overlay-images" in out.text("bootc-storage-ls").split()

    # 3-5. v2 booted, v1 its rollback, /etc merged and /var kept; a transient /usr; an
    # update is checked for, downloaded only, released, and applied with a reboot.
    # Neither Debian can soft-reboot into a deployment (systemd 254 and libostree 2025.3 are
    # needed; bookworm has systemd 252, trixie libostree 2025.2): `required` is refused.
    soft = """bootc upgrade --soft-reboot=required --download-only > "$OUT/soft.txt" 2>&1 \\
    || echo $? > "$OUT/soft-rc"
"""
    _, out = boot_step(
        disk,
        workdir,
        MOUNT_IMAGES
        + f"""
bootc status --format json > "$OUT/v2.json"
cat /etc/pybootc-test.conf > "$OUT/etc"
cat /var/lib/pybootc-test/state > "$OUT/var"
bootc usr-overlay > "$OUT/overlay.txt"
touch /usr/pybootc-overlay-test
bootc status --format json > "$OUT/overlay.json"
bootc upgrade --check > "$OUT/check.txt"
{soft}bootc upgrade --quiet --download-only > "$OUT/download.txt"
bootc status --format json > "$OUT/downloaded.json"
bootc upgrade --from-downloaded > "$OUT/released.txt"
bootc status --format json > "$OUT/released.json"
then_ none
bootc upgrade --apply > "$OUT/apply.txt" || true
echo "upgrade --apply returned" > "$OUT/apply-returned"
""",
        f"{backend}: v2, /etc, /var, usr-overlay, download-only, upgrade --apply",
        timeout=SWITCH_TIMEOUT,
        extra_disks=(at_v21,),
    )
    v2 = host_document(out, "v2.json")["status"]
    assert version(v2["booted"]) == "2" and version(v2["rollback"]) == "1"
    assert v2["booted"]["store"] == (
        "ostreeContainer" if backend == "ostree" else "containerStorage"
    )
    assert out.text("etc") == "edited on v1\n" and out.text("var") == "kept\n"
    overlay = host_document(out, "overlay.json")["status"]
    assert overlay["usrOverlay"] == {"accessMode": "readWrite", "persistence": "transient"}
    assert out.text("check.txt").startswith(f"Update available for: {STREAM_REF}")
    assert out.text("soft-rc").strip() == "1"
    assert out.text("soft.txt") == (
        "error: Soft reboot was required but this host cannot soft-reboot: "
        + SOFT_REBOOT_REFUSAL[images.release]
        + "\n"
    )
    assert out.text("download.txt").startswith("Queued for next boot:")
    downloaded = host_document(out, "downloaded.json")["status"]
    assert version(downloaded["staged"]) == "2.1" and downloaded["staged"]["downloadOnly"]
    assert out.text("released.txt") == "Staged deployment will now be applied on reboot\n"
    assert not host_document(out, "released.json")["status"]["staged"]["downloadOnly"]
    assert out.text("apply.txt").split("\n")[1] == "Staged update present, not changed"
    assert "apply-returned" in out.files  # killed by the shutdown: the `|| true` ran

    # 6. v2.1 booted by the update; the /usr overlay is gone; a rollback is queued and
    # unqueued, then `rollback --apply` reboots into v2.
    _, out = boot_step(
        disk,
        workdir,
        """
bootc status --format json > "$OUT/v21.json"
test ! -e /usr/pybootc-overlay-test && touch "$OUT/overlay-gone"
bootc rollback > "$OUT/rollback.txt"
bootc status --format json > "$OUT/queued.json"
bootc rollback > "$OUT/unrollback.txt"
bootc status --format json > "$OUT/unqueued.json"
then_ none
# `auto` where the host cannot soft-reboot: a full reboot, as upstream falls back.
bootc rollback --apply --soft-reboot=auto || true
""",
        f"{backend}: v2.1, rollback queued and unqueued, rollback --apply",
    )
    v21 = host_document(out, "v21.json")["status"]
    assert version(v21["booted"]) == "2.1" and version(v21["rollback"]) == "2"
    assert "overlay-gone" in out.files
    assert out.text("rollback.txt") == "Next boot: rollback deployment\n"
    assert out.text("unrollback.txt") == (
        "notice: Reverting queued rollback state\nNext boot: current deployment\n"
    )
    queued = host_document(out, "queued.json")
    assert queued["status"]["rollbackQueued"] is True
    assert queued["spec"]["bootOrder"] == "rollback"
    unqueued = host_document(out, "unqueued.json")
    assert unqueued["status"]["rollbackQueued"] is False
    assert unqueued["spec"]["bootOrder"] == "default"

    # bootc-fetch-apply-updates.timer, fired by hand (a runtime drop-in makes it elapse
    # three seconds after it starts, instead of an hour after boot), starts its service,
    # which brings v2 back to the stream's newest build and reboots into it.
    _, out = boot_step(
        disk,
        workdir,
        MOUNT_IMAGES
        + """
bootc status --format json > "$OUT/back.json"
systemctl cat bootc-fetch-apply-updates.timer > "$OUT/timer"
mkdir -p /run/systemd/system/bootc-fetch-apply-updates.timer.d
printf '[Timer]\\nOnActiveSec=3s\\nRandomizedDelaySec=0\\n' \\
    > /run/systemd/system/bootc-fetch-apply-updates.timer.d/now.conf
systemctl daemon-reload
then_ none
systemctl start bootc-fetch-apply-updates.timer
sleep 600 || true
""",
        f"{backend}: v2, bootc-fetch-apply-updates.service",
        timeout=SWITCH_TIMEOUT,
        extra_disks=(at_v21,),
    )
    back = host_document(out, "back.json")["status"]
    assert version(back["booted"]) == "2"
    assert "OnUnitInactiveSec=8h" in out.text("timer")

    # 7. v2.1 again; a switch to the broken v3 with --apply.
    _, out = boot_step(
        disk,
        workdir,
        MOUNT_IMAGES
        + """
bootc status --format json > "$OUT/v21-again.json"
then_ none
bootc switch --apply --quiet --transport oci /run/images/layout:v3 || true
""",
        f"{backend}: v2.1 by the timer's service, switch --apply to v3",
        timeout=SWITCH_TIMEOUT,
        extra_disks=(at_v21,),
    )
    assert version(host_document(out, "v21-again.json")["status"]["booted"]) == "2.1"

    entries = read_entries(disk)
    agent = make_agent_disk(workdir / "agent-v3.img", "true")
    v3_log = workdir / f"console-{backend}-v3.log"
    with phase(f"{backend}: v3 fails to boot"), pytest.raises(BootFailed) as failed:
        boot(disk, agent, 0, BOOT_TIMEOUT, console_log=v3_log)
    # Stopped at the failure marker, not at the timeout, with the console's last lines.
    assert "the console shows " in str(failed.value)
    assert_console_tail(str(failed.value), v3_log)

    # The loader's fallback: the previous entry boots, and rollback makes it the default.
    _, out = boot_step(
        disk,
        workdir,
        """
bootc status --format json > "$OUT/fallback.json"
bootc rollback
""",
        f"{backend}: fallback to the previous entry, rollback",
        entry=1,
    )
    fallback = host_document(out, "fallback.json")["status"]
    assert version(fallback["booted"]) == "2.1" and version(fallback["rollback"]) == "3"
    assert read_entries(disk)[0].initrd == entries[1].initrd


def assert_console_tail(message: str, console_log: Path) -> None:
    lines = console_log.read_text(errors="replace").splitlines()
    tail = lines[-50:]
    assert message.endswith(f"\nlast {len(tail)} console lines:\n" + "\n".join(tail))
    assert len(tail) == 50


def test_a_guest_that_panics_or_never_reaches_the_agent_fails_with_the_console_tail(
    images: GuestImages, workdir: Path
) -> None:
    disk = install_v1(images, workdir)
    agent = make_agent_disk(workdir / "agent.img", "true")
    # No init in the initramfs: the kernel then cannot mount root=UUID=... itself.
    panic_log = workdir / "console-panic.log"
    with phase("a guest that panics"), pytest.raises(BootFailed) as panicked:
        kargs = ("console=ttyS0", "rdinit=/nonexistent")
        boot(disk, agent, 0, BOOT_TIMEOUT, console_log=panic_log, extra_kargs=kargs)
    assert "the console shows 'Kernel panic'" in str(panicked.value)
    assert_console_tail(str(panicked.value), panic_log)

    # A boot slower than its bound is stopped there, wherever it has got to.
    slow_log = workdir / "console-slow.log"
    with phase("a guest that does not reach the agent in 15 s"), pytest.raises(BootFailed) as slow:
        boot(disk, agent, 0, 15, console_log=slow_log)
    assert ": timed out after 15 s\n" in str(slow.value)
    assert_console_tail(str(slow.value), slow_log)
