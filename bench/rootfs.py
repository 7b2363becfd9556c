"""The Debian workload: a bootable bookworm tree split into a realistic layered image.

mmdebstrap builds the tree once from the machine's own apt mirror (minbase, a kernel,
systemd and enough userland to make it about a gigabyte) and it is kept as a tarball;
the sizes the benchmark compares are picked from it file by file (`trim`). Three layers
split the tree by path; a fourth changes it the ways image builds do: it rewrites files,
deletes some (whiteouts), replaces whole directories (opaque markers) and turns a file
into a directory and back.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

from layout_writer import LayerTar, WrittenLayer, open_layers, tag_image

from pybootc import tools
from pybootc.errors import BootcError
from tests.boot.guest_recipe import host_apt_sources

SUITE = "bookworm"
PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "python3", "perl", "git", "openssh-server",
    "build-essential", "vim-tiny", "curl", "iproute2", "less",
)  # fmt: skip
# Bump when the tree or the layer recipe changes, so cached layouts are rebuilt.
RECIPE = "debian-bootable-v2"

# The usual split, and another one of the same tree: another build of the same OS,
# whose layers the repo has none of.
SPLIT = (("usr/lib", 1), ("usr/share", 2))
OTHER_SPLIT = (("usr/share", 1), ("usr/lib", 2))
_CHANGES = 3
_WHITEOUT_DIRS = frozenset({"usr/share/man", "usr/share/locale", "var/cache/debconf"})
_OPAQUE_DIRS = frozenset({"usr/share/doc", "etc/apt"})
_REWRITTEN = frozenset({"usr/lib/os-release", "etc/passwd", "etc/hostname", "etc/issue"})
# Every Nth regular file below these is rewritten, or deleted, by the change layer.
_CHURNED_TREES = ("usr/bin/", "usr/lib/")
_CHURN_EVERY = 25
_NEW_FILES = 300
_LATER = 86_400
# security.capability, VFS_CAP_REVISION_2 with the effective bit: cap_net_raw.
_CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def build_tarball(tarball: Path) -> None:
    """Bootstrap the tree with mmdebstrap, straight into `tarball`."""
    sources = host_apt_sources(SUITE)
    if not sources:
        raise BootcError(f"No deb source for {SUITE} in /etc/apt")
    partial = tarball.with_suffix(".partial")
    tools.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            "--quiet",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            partial,
            *sources,
        ]
    )
    partial.replace(tarball)


def unpack_tarball(tarball: Path, tree: Path) -> None:
    tree.mkdir(parents=True)
    tools.run(
        [
            "tar",
            "--extract",
            "--numeric-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
            "--file",
            tarball,
            "--directory",
            tree,
        ]
    )


def make_bootable(tree: Path) -> None:
    """The kernel and initramfs where ostree looks for them, /boot left empty."""
    boot = tree / "boot"
    for kernel in sorted(boot.glob("vmlinuz-*")):
        version = kernel.name.removeprefix("vmlinuz-")
        modules = tree / "usr/lib/modules" / version
        modules.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel, modules / "vmlinuz")
        initrd = boot / f"initrd.img-{version}"
        if initrd.exists():
            shutil.copy2(initrd, modules / "initramfs.img")
    for entry in boot.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _kept(rel: str) -> bool:
    """What every size keeps: the kernel, and what identifies the OS."""
    return rel.endswith(("/vmlinuz", "/initramfs.img")) or rel in (
        "usr/lib/os-release",
        "etc/passwd",
    )


def trim(tree: Path, target: int) -> None:
    """Keep regular files adding up to about `target` bytes, picked by a hash of their
    path (so the same ones every time, and the mix of sizes stays the tree's); the
    kernel, initramfs and os-release always stay."""
    kept = sum(st.st_size for rel, st in _walk(tree) if stat.S_ISREG(st.st_mode) and _kept(rel))
    rest = unpacked_size(tree) - kept
    fraction = min(1.0, max(0.0, (target - kept) / rest)) if rest else 1.0
    cut = int(fraction * (1 << 32))
    for rel, st in list(_walk(tree)):
        if not stat.S_ISREG(st.st_mode) or _kept(rel):
            continue
        if int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "big") >= cut:
            (tree / rel).unlink()


def unpacked_size(tree: Path) -> int:
    """Bytes of the tree's regular files, each inode once."""
    seen: set[int] = set()
    total = 0
    for _, st in _walk(tree):
        if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


def _walk(tree: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below `tree`, parents before children, in name order."""
    with os.scandir(tree / rel if rel else tree) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(tree, path)


def _base_layer(rel: str, split: tuple[tuple[str, int], ...]) -> int:
    for prefix, index in split:
        if rel == prefix or rel.startswith(prefix + "/"):
            return index
    return 0


def _pax_value(value: bytes) -> str:
    # tarfile writes str PAX values back with surrogateescape: binary xattrs survive.
    return value.decode("utf-8", "surrogateescape")


def _info(name: str, kind: bytes, mode: int, *, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime = 1_750_000_000
    return info


class TreeLayer:
    """One layer being written from the tree: entries are copied with their parents."""

    def __init__(self, tree: Path, out: LayerTar) -> None:
        self.tree = tree
        self.tar = out.tar
        self.emitted: set[str] = set()

    def copy(self, rel: str) -> None:
        if rel in self.emitted:
            return
        self._parents(rel)
        info = self.tarinfo(rel)
        if info is None:  # a socket: tar cannot hold one
            return
        if info.isreg() and info.size:
            with open(self.tree / rel, "rb") as data:
                self.tar.addfile(info, data)
        else:
            self.tar.addfile(info)
        self.emitted.add(rel)

    def tarinfo(self, rel: str) -> tarfile.TarInfo | None:
        path = self.tree / rel
        info = self.tar.gettarinfo(os.fspath(path), arcname=rel)
        if info is None:
            return None
        # Numeric ids only, and whole-second times so PAX adds no mtime record.
        info.uname = info.gname = ""
        info.mtime = int(info.mtime)
        info.pax_headers = {
            f"SCHILY.xattr.{name}": _pax_value(os.getxattr(path, name, follow_symlinks=False))
            for name in os.listxattr(path, follow_symlinks=False)
        }
        return info

    def add(self, info: tarfile.TarInfo, data: bytes = b"") -> None:
        """A member that is not in the tree; its parents must be in the tree or added."""
        self._parents(info.name)
        info.size = len(data) if info.isreg() else 0
        self.tar.addfile(info, io.BytesIO(data) if data else None)
        self.emitted.add(info.name)

    def _parents(self, rel: str) -> None:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in self.emitted:
                self.copy(parent)

    def whiteout(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        self.add(_info(f"{parent}/.wh.{name}" if parent else f".wh.{name}", tarfile.REGTYPE, 0))


class ChangeLayer:
    """The top layer: what a `RUN apt-get ...` style build step does to the tree."""

    def __init__(self, layer: TreeLayer) -> None:
        self.layer = layer
        self._hidden: list[str] = []
        self._churn = 0

    def visit(self, rel: str, st: os.stat_result) -> None:
        if any(rel.startswith(prefix) for prefix in self._hidden):
            return
        if rel in _WHITEOUT_DIRS:
            self.layer.whiteout(rel)
            self._hidden.append(rel + "/")
        elif rel in _OPAQUE_DIRS:
            self._replace_directory(rel)
            self._hidden.append(rel + "/")
        elif rel == "var/mail" and stat.S_ISDIR(st.st_mode):
            self.layer.add(_info(rel, tarfile.SYMTYPE, 0o777, link="spool/mail"))
            self._hidden.append(rel + "/")
        elif rel == "etc/motd" and stat.S_ISREG(st.st_mode):
            self.layer.add(_info(rel, tarfile.DIRTYPE, 0o755))
            self.layer.add(_info(f"{rel}/10-bench", tarfile.REGTYPE, 0o644), b"Benchmark image\n")
        elif rel in _REWRITTEN and stat.S_ISREG(st.st_mode):
            self._rewrite(rel, xattrs={})
        elif stat.S_ISREG(st.st_mode) and rel.startswith(_CHURNED_TREES):
            self._churn += 1
            if self._churn % _CHURN_EVERY == 0:
                caps = {"security.capability": _CAP_NET_RAW} if rel.startswith("usr/bin/") else {}
                self._rewrite(rel, xattrs={"user.pybootc.bench": b"rewritten", **caps})
            elif self._churn % _CHURN_EVERY == _CHURN_EVERY // 2:
                self.layer.whiteout(rel)

    def finish(self) -> None:
        base = "usr/local/share/bench"
        self.layer.add(_info(base, tarfile.DIRTYPE, 0o755))
        for index in range(_NEW_FILES):
            payload = f"new file {index}\n".encode() * (index % 64 + 1)
            self.layer.add(_info(f"{base}/file-{index:03d}", tarfile.REGTYPE, 0o644), payload)

    def _rewrite(self, rel: str, xattrs: dict[str, bytes]) -> None:
        info = self.layer.tarinfo(rel)
        assert info is not None
        if info.islnk():  # another name of an inode rewritten just before
            self.layer.add(info)
            return
        data = (self.layer.tree / rel).read_bytes() + b"\n# rewritten by the benchmark\n"
        info.mtime += _LATER
        info.pax_headers = {
            **info.pax_headers,
            **{f"SCHILY.xattr.{name}": _pax_value(value) for name, value in xattrs.items()},
        }
        self.layer.add(info, data)

    def _replace_directory(self, rel: str) -> None:
        info = self.layer.tarinfo(rel)
        assert info is not None
        self.layer.add(info)
        self.layer.add(_info(f"{rel}/.wh..wh..opq", tarfile.REGTYPE, 0))
        if rel == "etc/apt":
            for sub in ("apt.conf.d", "sources.list.d", "trusted.gpg.d"):
                self.layer.add(_info(f"{rel}/{sub}", tarfile.DIRTYPE, 0o755))
            sources = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
            self.layer.add(
                _info(f"{rel}/sources.list.d/debian.sources", tarfile.REGTYPE, 0o644),
                (sources + "Components: main\n").encode(),
            )
            self.layer.add(
                _info(f"{rel}/apt.conf.d/99-bench", tarfile.REGTYPE, 0o644),
                b'APT::Install-Recommends "false";\n',
            )
        else:
            self.layer.add(_info(f"{rel}/bench", tarfile.DIRTYPE, 0o755))
            self.layer.add(
                _info(f"{rel}/bench/README", tarfile.REGTYPE, 0o644),
                b"Documentation was replaced by the benchmark.\n",
            )


def build_layout(
    tree: Path, layout: Path, tag: str, split: tuple[tuple[str, int], ...] = SPLIT
) -> list[WrittenLayer]:
    """Write the four-layer image of `tree` into `layout` as `tag`; its layers."""
    with open_layers(layout, _CHANGES + 1) as (outputs, written):
        layers = [TreeLayer(tree, out) for out in outputs]
        changes = ChangeLayer(layers[_CHANGES])
        for rel, st in _walk(tree):
            layers[_base_layer(rel, split)].copy(rel)
            changes.visit(rel, st)
        changes.finish()
    tag_image(layout, tag, written)
    return written


def add_files(
    layout: Path, tag: str, base: list[WrittenLayer], files: dict[str, tuple[bytes, int]]
) -> WrittenLayer:
    """Tag, as `tag`, the image of `base` plus one layer of `files` (path: content and
    mode), each with its parent directories."""
    with open_layers(layout, 1) as (outputs, written):
        (out,) = outputs
        made: set[str] = set()
        for path, (data, mode) in sorted(files.items()):
            parents = Path(path).parents
            for parent in reversed([str(p) for p in parents if str(p) != "."]):
                if parent not in made:
                    out.tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
                    made.add(parent)
            out.tar.addfile(_info(path, tarfile.REGTYPE, mode, size=len(data)), io.BytesIO(data))
    tag_image(layout, tag, [*base, *written])
    return written[0]


def add_update(layout: Path, tag: str, base: list[WrittenLayer], size: int) -> WrittenLayer:
    """Tag, as `tag`, the image of `base` plus one layer of `size` bytes that do not
    compress (and a changed file): what a one-layer update brings."""
    with open_layers(layout, 1) as (outputs, written):
        (out,) = outputs
        root = _info("usr/share/bench-update", tarfile.DIRTYPE, 0o755)
        out.tar.addfile(root)
        chunk = 1 << 20
        for index in range(max(1, size // chunk)):
            data = hashlib.shake_256(f"update {index}".encode()).digest(chunk)
            out.tar.addfile(
                _info(
                    f"usr/share/bench-update/blob-{index:03d}", tarfile.REGTYPE, 0o644, size=chunk
                ),
                io.BytesIO(data),
            )
        motd = b"Updated by the benchmark\n"
        out.tar.addfile(
            _info("etc/bench-release", tarfile.REGTYPE, 0o644, size=len(motd)), io.BytesIO(motd)
        )
    tag_image(layout, tag, [*base, *written])
    return written[0]
