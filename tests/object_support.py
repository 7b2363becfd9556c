"""A bare repo to write objects into, and libostree's own checksum of a file: what
pybootc's object writes are checked against."""

from __future__ import annotations

from pathlib import Path

from pybootc.ostree.gi import Gio, GLib, OSTree


def new_bare_repo(path: Path) -> OSTree.Repo:
    created = OSTree.Repo.new(Gio.File.new_for_path(str(path)))
    created.create(OSTree.RepoMode.BARE, None)
    return created


def libostree_checksum(path: Path) -> str:
    _, raw = OSTree.checksum_file(Gio.File.new_for_path(str(path)), OSTree.ObjectType.FILE, None)
    return str(OSTree.checksum_from_bytes(raw))


def corrupt_objects(repo: OSTree.Repo, commit: str) -> list[str]:
    """`ostree fsck` of the objects of one commit: those that do not read back as their
    checksums say, with libostree's words."""
    _, reachable = repo.traverse_commit(commit, 0, None)
    corrupt = []
    for key in reachable:
        checksum, kind = key.unpack()
        try:
            repo.fsck_object(kind, checksum, None)
        except GLib.Error as err:
            corrupt.append(f"{checksum}: {err.message}")
    return corrupt
