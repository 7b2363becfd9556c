"""What the guest base tree is made of: packages, apt sources, build hook and agent files.

Everything here feeds the recipe hash that names the cached base layer, so changing any
of it rebuilds the base with mmdebstrap; pybootc itself is not part of the base.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.boot.host_command import BootTestError

# Bump when anything about the base tree changes that the hash below cannot see.
RECIPE_VERSION = 1
# Every timestamp the build makes is clamped to this, so rebuilt layers differ only by content.
SOURCE_DATE_EPOCH = 1_750_000_000
CREATED = "2025-06-15T00:00:00Z"
# pybootc's PyPI-only runtime dependency; Debian has no python3-isal in bookworm.
ISAL = "isal==1.9.1"

# dracut comes before the kernel in apt's view so that initramfs-tools is never pulled in.
PACKAGES = (
    "dracut",
    "dracut-core",
    "linux-image-cloud-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "e2fsprogs",
    "ostree",
    "ostree-boot",
    "skopeo",
    "podman",
    "fuse-overlayfs",
    "uidmap",
    "gir1.2-ostree-1.0",
    "python3",
    "python3-gi",
    "python3-yaml",
    "python3-rich",
    "python3-zstandard",
    "python3-argcomplete",
)
# Per-release differences from PACKAGES: (added, removed).
RELEASE_PACKAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bookworm": ((), ()),
    "trixie": ((), ()),
    # testing: the first Debian whose libostree (2025.3+) and systemd (254+) soft-reboot.
    "forky": ((), ()),
}

# The virtio and ext4 drivers are listed explicitly: if the cloud kernel builds one of them
# in, dracut skips it; if it is a module, the initramfs must carry it to find the root disk.
DRIVERS = "virtio_blk virtio_pci virtio_scsi ext4"

# Runs on the host as mmdebstrap's customize hook, with the new root as $1 and /proc, /sys
# and /dev mounted in it, which dracut needs.
CUSTOMIZE_HOOK = f"""\
set -eu
root="$1"
kver=$(ls "$root/usr/lib/modules")
modules="/usr/lib/modules/$kver"
# libostree looks for the kernel and initramfs next to the modules, not in /boot. Newer
# Debian kernels (forky) already put it there, with /boot's name for the same file.
if ! [ "$root/boot/vmlinuz-$kver" -ef "$root$modules/vmlinuz" ]; then
    cp "$root/boot/vmlinuz-$kver" "$root$modules/vmlinuz"
fi
chroot "$root" dracut --force --no-hostonly --add ostree --add-drivers "{DRIVERS}" \\
    "$modules/initramfs.img" "$kver"
# v3's initramfs: no ostree module, so ostree-prepare-root never runs and the boot fails.
chroot "$root" dracut --force --no-hostonly --omit ostree --add-drivers "{DRIVERS}" \\
    /broken-initramfs.img "$kver"
chmod 0644 "$root$modules/initramfs.img" "$root/broken-initramfs.img"
# A bootc image's /boot is empty: the deployment's /boot is where the sysroot's is mounted.
find "$root/boot" -mindepth 1 -delete
"""

AGENT_SCRIPT = """\
#!/bin/bash
# pybootc test agent: runs the host's step from the disk labelled "agent", then powers off
# or reboots as the step asked in out/then (poweroff, reboot or none).
set -u
# A shutdown that the step itself starts must not kill the agent before it writes rc. A
# handler, not `trap '' TERM`: an ignored signal stays ignored in every child, and then a
# `bootc upgrade --apply` in the step, which waits to be stopped as upstream's does, never is.
trap 'say "SIGTERM: the system is going down; waiting for the step"' TERM
# The guest's uptime on each marker lets the host time boot and step apart.
say() { echo "PYBOOTC-AGENT: $* (uptime $(cut -d' ' -f1 /proc/uptime))" >/dev/console; }
finish() {
    say "then=$1"
    case "$1" in
        reboot) systemctl --no-block reboot ;;
        none) ;;
        *) systemctl --no-block poweroff ;;
    esac
}
say start
disk=/dev/disk/by-label/agent
for _ in $(seq 1 "${PYBOOTC_AGENT_WAIT:-60}"); do
    [ -b "$disk" ] && break
    sleep 1
done
if [ ! -b "$disk" ]; then
    say "error: no disk labelled agent"
    finish poweroff
    exit 1
fi
mkdir -p /run/agent
if ! mount "$disk" /run/agent; then
    say "error: cannot mount $disk"
    finish poweroff
    exit 1
fi
mkdir -p /run/agent/out
rm -f /run/agent/out/then /run/agent/out/rc
say "step"
(cd /run/agent && exec bash /run/agent/step.sh) </dev/null >/run/agent/out/log 2>&1
rc=$?
echo "$rc" >/run/agent/out/rc
then=poweroff
if [ -s /run/agent/out/then ]; then
    then=$(tr -d '[:space:]' </run/agent/out/then)
fi
sync
umount /run/agent || say "warning: cannot unmount /run/agent"
say "rc=$rc"
finish "$then"
"""

AGENT_UNIT = """\
[Unit]
Description=pybootc test agent: runs the step script from the disk labelled agent
After=local-fs.target ostree-remount.service ostree-finalize-staged.path systemd-udevd.service

[Service]
Type=oneshot
ExecStart=/usr/libexec/pybootc-test-agent
TimeoutStartSec=infinity
# The whole group gets SIGTERM at shutdown: bootc in the step exits, the step and the agent
# trap it and go on to write rc.
TimeoutStopSec=60
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# The host reads the guest's progress from the serial log, so the journal goes there too.
JOURNALD_CONSOLE = """\
[Journal]
ForwardToConsole=yes
MaxLevelConsole=info
"""

BOOTC_SCRIPT = """\
#!/usr/bin/python3
import sys

from pybootc.cli import main

sys.exit(main())
"""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the base tree; its hash names the cached base layer."""

    release: str
    packages: tuple[str, ...]
    sources: tuple[str, ...]
    isal: str = ISAL
    version: int = RECIPE_VERSION
    source_date_epoch: int = SOURCE_DATE_EPOCH

    def key(self) -> str:
        text = json.dumps(
            {
                "recipe": [
                    self.release,
                    self.packages,
                    self.sources,
                    self.isal,
                    self.version,
                    self.source_date_epoch,
                ],
                "files": [CUSTOMIZE_HOOK, AGENT_SCRIPT, AGENT_UNIT, JOURNALD_CONSOLE, DRIVERS],
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_for(release: str) -> Recipe:
    added, removed = RELEASE_PACKAGES.get(release, ((), ()))
    packages = tuple(p for p in PACKAGES if p not in removed) + added
    sources = host_apt_sources(release)
    if not sources:
        raise BootTestError("no Debian deb source in /etc/apt to build the guest from")
    return Recipe(release=release, packages=packages, sources=sources)


# --- the host's apt sources ------------------------------------------------------------


def host_apt_sources(release: str, apt_dir: Path = Path("/etc/apt")) -> tuple[str, ...]:
    """`deb URI SUITE COMPONENTS` lines for `release` on the mirrors the host uses for itself.

    Only the host's own Debian suites are taken (third-party repositories are skipped), and
    their codename is replaced by `release`: the same mirror serves every Debian release.
    """
    host = _host_codename()
    found: list[str] = []
    for uri, suite, components in _host_sources(apt_dir):
        if suite == host or suite.startswith(host + "-"):
            line = f"deb {uri} {release}{suite[len(host) :]} {components}"
            if line not in found:
                found.append(line)
    return tuple(found)


def _host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise BootTestError(f"no VERSION_CODENAME in {os_release}")


def _host_sources(apt_dir: Path) -> Iterator[tuple[str, str, str]]:
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for raw in path.read_text().splitlines():
            # mmdebstrap finds Debian's keyring itself, so `[signed-by=...]` options go.
            words = re.sub(r"\[[^]]*\]", "", raw.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb":
                yield words[1], words[2], " ".join(words[3:])
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822_fields(stanza)
            if "deb" not in fields.get("Types", "").split():
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    yield uri, suite, fields.get("Components", "main")


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields
