"""Placeholders of device nodes, FIFOs and sockets become those files again in a merged
checkout: where the layer commits list them, or anywhere for a layer commit made before
they were listed; never through a symlink a higher layer put on the way."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pybootc.layers.special import SPECIAL_XATTR
from pybootc.stores.layered import restore_special_files


def placeholder(path: Path, value: bytes, mode: int = 0o640) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    path.chmod(mode)
    os.setxattr(path, SPECIAL_XATTR, value)


def test_listed_placeholders_are_restored_and_nothing_past_a_symlink(target: Path) -> None:
    root, outside = target / "root", target / "outside"
    placeholder(root / "dev/console", b"c 5 1", 0o620)
    placeholder(outside / "node", b"c 1 3")
    (root / "link").symlink_to("../outside")
    placeholder(root / "run/unlisted", b"p")
    placeholder(root / "top", b"s")

    restore_special_files(root, ["dev/console", "top", "link/node", "replaced/gone"])

    st = os.lstat(root / "dev/console")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 5 and os.minor(st.st_rdev) == 1
    assert stat.S_IMODE(st.st_mode) == 0o620
    assert stat.S_ISSOCK(os.lstat(root / "top").st_mode)
    assert stat.S_ISREG(os.lstat(outside / "node").st_mode)
    assert stat.S_ISREG(os.lstat(root / "run/unlisted").st_mode)


def test_unlisted_placeholders_are_found_by_walking(target: Path) -> None:
    root = target / "root"
    placeholder(root / "run/fifo", b"p")
    placeholder(root / "dev/sda", b"b 8 0")
    (root / "plain").write_text("kept")

    restore_special_files(root, None)

    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    assert stat.S_ISBLK(os.lstat(root / "dev/sda").st_mode)
    assert (root / "plain").read_text() == "kept"
