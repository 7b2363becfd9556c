"""What only a booted host does: reboot into an update, soft reboot, hold a staged
deployment back (download-only), and a transient writable /usr.

Each of these is refused on a sysroot that is not the running system, before
anything is written, because none of them means anything there.
"""

from __future__ import annotations

import enum
import functools
import re
import signal
import sys
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.kargs import split as split_kargs

# The first systemd with `systemctl soft-reboot`.
SOFT_REBOOT_SYSTEMD = 254
# The release that added ostree_sysroot_deployment_set_soft_reboot.
SOFT_REBOOT_OSTREE = "2025.3"
# ostree-prepare-root's configuration, in a deployment; /etc's replaces /usr/lib's.
PREPARE_ROOT_CONFIGS = ("usr/lib/ostree/prepare-root.conf", "etc/ostree/prepare-root.conf")
COMPOSEFS_KARG = "ostree.prepare-root.composefs"
_COMPOSEFS_ON = ("yes", "true", "1", "signed", "verity")


class SoftReboot(enum.StrEnum):
    REQUIRED = "required"
    AUTO = "auto"


def require_booted(booted: bool, what: str) -> None:
    if not booted:
        raise BootcError(f"{what} only applies on booted hosts")


def _systemctl_and_wait(verb: str) -> None:
    """`systemctl VERB` as upstream starts it (systemd-run, so our exit races nothing),
    then wait: systemd stops us on the way down; exiting first would look like a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    tools.run(["systemd-run", "--quiet", "--", "systemctl", verb])
    while True:
        signal.pause()


def reboot() -> None:
    _systemctl_and_wait("reboot")


@functools.cache
def systemd_version() -> int:
    out = tools.run(["systemctl", "--version"]).stdout.decode()
    found = re.match(r"systemd (\d+)", out)
    return int(found.group(1)) if found else 0


def soft_reboot_unavailable() -> str | None:
    """Why this host cannot soft-reboot into another deployment, or None if it can."""
    version = systemd_version()
    if version < SOFT_REBOOT_SYSTEMD:
        return f"systemd {version} has no soft-reboot (it needs {SOFT_REBOOT_SYSTEMD} or newer)"
    if not hasattr(OSTree.Sysroot, "deployment_set_soft_reboot"):
        return (
            f"libostree {OSTree.VERSION_S} cannot prepare a soft reboot"
            f" (it needs {SOFT_REBOOT_OSTREE} or newer)"
        )
    return None


def composefs_enabled(deployment_root: Path, cmdline: str) -> bool:
    """Whether ostree-prepare-root must mount this deployment with composefs: libostree
    prepares a soft reboot only into such a deployment ("soft reboot not supported
    without composefs"), whatever deployment_can_soft_reboot says.

    As ostree-prepare-root reads it: `[composefs] enabled` of the deployment's
    prepare-root.conf (yes, signed or verity; off when absent), which the running
    kernel's `ostree.prepare-root.composefs=` overrides.
    """
    value = "no"
    for name in PREPARE_ROOT_CONFIGS:
        keyfile = GLib.KeyFile()
        try:
            keyfile.load_from_file(str(deployment_root / name), GLib.KeyFileFlags.NONE)
        except GLib.Error:
            continue  # absent (or unreadable, which prepare-root would refuse too)
        try:
            value = keyfile.get_value("composefs", "enabled")
        except GLib.Error:
            value = "no"
    for karg in split_kargs(cmdline):
        key, _, setting = karg.partition("=")
        if key == COMPOSEFS_KARG:
            value = setting
    return value.strip().lower() in _COMPOSEFS_ON


def check_soft_reboot(mode: SoftReboot | None) -> bool:
    """Whether to soft-reboot; `required` on a host that cannot is refused up front."""
    if mode is None:
        return False
    reason = soft_reboot_unavailable()
    if reason is None:
        return True
    if mode is SoftReboot.REQUIRED:
        raise BootcError(f"Soft reboot was required but this host cannot soft-reboot: {reason}")
    return False


def soft_reboot() -> None:
    _systemctl_and_wait("soft-reboot")


def usr_overlay(*, read_only: bool) -> int:
    """A transient overlay on /usr, as upstream does it: `ostree admin unlock`."""
    return tools.run_passthrough(["ostree", "admin", "unlock", *(["--transient"] * read_only)])
