"""The host's SELinux policy as an image layer, for the tests that label with it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pybootc.sample.ocibuild import Entry, Layer, directory, file, layer

HOST_SELINUX = Path("/etc/selinux")


def policy_type() -> str:
    for line in (HOST_SELINUX / "config").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "SELINUXTYPE":
            return value.strip()
    raise AssertionError("no SELINUXTYPE in /etc/selinux/config")


def file_contexts() -> Path:
    return HOST_SELINUX / policy_type() / "contexts/files/file_contexts"


def policy_files() -> list[Path]:
    """What libostree's SePolicy reads, and no more (the .bin caches alone are 7 MB):
    the config naming the policy type, the file contexts with their equivalence rules
    (`.subs_dist`), and the binary policy, which it checksums and fails without."""
    root = HOST_SELINUX / policy_type()
    found = [
        HOST_SELINUX / "config",
        file_contexts(),
        *sorted(root.glob("contexts/files/file_contexts.subs*")),
        *sorted(root.glob("policy/policy.*")),
    ]
    assert len(found) >= 3 and all(path.is_file() for path in found), found
    return found


def policy_layer() -> Layer:
    """The host's policy files at the same paths under the image's /etc."""
    entries: list[Entry] = []
    made: set[Path] = set()
    for path in policy_files():
        relative = path.relative_to("/")
        for parent in reversed(relative.parents[:-1]):
            if parent not in made and parent != Path("etc"):
                mode = stat.S_IMODE(os.stat(Path("/") / parent).st_mode)
                entries.append(directory(str(parent), mode=mode))
                made.add(parent)
        mode = stat.S_IMODE(path.stat().st_mode)
        entries.append(file(str(relative), path.read_bytes(), mode=mode))
    return layer(*entries)
