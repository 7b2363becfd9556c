"""`bootc install to-disk --via-loopback FILE`: a disk image, through a loop device.

The disk gets a GPT with one partition, an ext4 root labelled `root`, and the
image installed into it as `install to-filesystem` does, booted by `root=UUID=`.
pybootc installs no boot loader: the BLS entries in /boot/loader/entries are for
a loader outside the disk (a VM's, or a harness that reads them). A real disk
needs one of its own to boot from firmware, so it is refused.
"""

from __future__ import annotations

import json
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pybootc import tools
from pybootc.commands import install_config
from pybootc.commands.install import install_planned, plan_install
from pybootc.commands.report import Report
from pybootc.errors import BootcError, error_context
from pybootc.oci.imgref import OstreeImageReference
from pybootc.ostree.kargs import checked
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.stores import Backend

# The Discoverable Partitions Specification's root partition type for x86-64.
ROOT_PARTITION_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
FILESYSTEMS = ("ext4",)
# A root smaller than this cannot hold a deployment of any real OS image.
MINIMUM_SIZE = 1 << 30


def _check_device(device: Path, *, via_loopback: bool, wipe: bool) -> None:
    if not via_loopback:
        raise BootcError(
            "pybootc installs no boot loader, which a disk needs to boot from firmware;"
            " use --via-loopback to write a disk image for a BLS boot loader"
        )
    try:
        mode = device.stat().st_mode
    except FileNotFoundError:
        raise BootcError(
            f"{device} does not exist (create it, e.g. truncate -s 10G FILE)"
        ) from None
    if not stat.S_ISREG(mode):
        raise BootcError(f"--via-loopback needs a regular file; {device} is not one")
    if device.stat().st_size < MINIMUM_SIZE:
        raise BootcError(f"{device} is smaller than 1 GiB; grow it with truncate -s")
    if not wipe and _signatures(device):
        raise BootcError(
            f"Detected existing partitions or filesystems on {device};"
            " use e.g. `wipefs` or --wipe if you intend to overwrite"
        )


def _signatures(device: Path) -> list[str]:
    out = tools.run(["wipefs", "--json", device]).stdout
    found = json.loads(out or b"{}").get("signatures", [])
    return [str(signature.get("type", "")) for signature in found]


def _partition(image: Path) -> tuple[int, int]:
    """One GPT partition over the whole image, for the root: its offset and size."""
    layout = f'label: gpt\nsize=+, type={ROOT_PARTITION_TYPE}, name="root"\n'
    tools.run(["sfdisk", "--quiet", "--wipe", "always", image], input=layout.encode())
    table = json.loads(tools.run(["sfdisk", "--json", image]).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    (partition,) = table["partitions"]
    return int(partition["start"]) * sector, int(partition["size"]) * sector


@contextmanager
def _loop_device(image: Path, offset: int, size: int) -> Iterator[Path]:
    """A loop device over one region of `image`: the partition, without relying on
    the kernel's partition scan (and udev) to make its device node."""
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    device = Path(tools.run([*argv, image]).stdout.decode().strip())
    try:
        yield device
    finally:
        tools.run(["losetup", "--detach", device], check=False)


@contextmanager
def _mounted(partition: Path) -> Iterator[Path]:
    mountpoint = Path(tempfile.mkdtemp(prefix="bootc-install-", dir="/run"))
    tools.run(["mount", partition, mountpoint])
    try:
        yield mountpoint
    finally:
        if tools.run(["umount", mountpoint], check=False).returncode != 0:
            # A failed install's traceback still holds the Sysroot and its open
            # directories: detach the mount now, and the kernel lets the filesystem
            # (and so the loop device) go when this process closes them.
            tools.run(["umount", "--lazy", mountpoint])
        mountpoint.rmdir()


def install_to_disk(
    device: Path,
    source: OstreeImageReference,
    *,
    target_imgref: OstreeImageReference | None = None,
    via_loopback: bool = False,
    wipe: bool = False,
    filesystem: str | None = None,
    backend: Backend = Backend.OSTREE,
    stateroot: str | None = None,
    kargs: Sequence[str] = (),
    disable_selinux: bool = False,
    decryption_key: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Report:
    # As upstream: --filesystem, else the install configuration's root-fs-type.
    filesystem = filesystem or (install_config.load(Path("/")) or {}).get("root-fs-type") or "ext4"
    if filesystem not in FILESYSTEMS:
        raise BootcError(f"Unsupported filesystem {filesystem}; pybootc makes {FILESYSTEMS[0]}")
    checked("--karg", kargs)  # what the command line says is wrong, before the device
    _check_device(device, via_loopback=via_loopback, wipe=wipe)
    # The image and the stateroot are refused before the disk is partitioned too. The
    # filesystem made there is empty: checked at the device's path, no store has any
    # layer, as none will have.
    plan = plan_install(
        device,
        source,
        backend=backend,
        stateroot=stateroot,
        kargs=kargs,
        decryption_key=decryption_key,
    )
    with error_context(f"Installing to disk {device}"):
        offset, size = _partition(device)
        with _loop_device(device, offset, size) as partition:
            tools.run(["mkfs.ext4", "-q", "-F", "-L", "root", partition])
            uuid = tools.run(["blkid", "-p", "-s", "UUID", "-o", "value", partition]).stdout
            root = f"root=UUID={uuid.decode().strip()}"
            with _mounted(partition) as mountpoint:
                return install_planned(
                    mountpoint,
                    plan,
                    root_kargs=[root, "rw"],
                    target_imgref=target_imgref,
                    disable_selinux=disable_selinux,
                    progress=progress,
                )
