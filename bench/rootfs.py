"""The Debian workload: a bookworm minbase tree split into a realistic layered image.

mmdebstrap builds the tree once from the machine's own apt mirror and it is kept
as a tarball. Three layers split the tree by path; a fourth changes it the ways
image builds do: it rewrites files, deletes some (whiteouts), replaces whole
directories (opaque markers) and turns a file into a directory and back.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

from layout_writer import LayerTar, open_layers, tag_image

from pybootc import tools
from pybootc.errors import BootcError

SUITE = "bookworm"
# Bump when the layer recipe changes, so cached layouts are rebuilt.
RECIPE = "debian-minbase-v1"

_LAYER_OF_PREFIX = (("usr/lib", 1), ("usr/share", 2))
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


def debian_sources(apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """One-line `deb` entries for the suite, from the machine's own apt configuration."""
    listed = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    lines = [line for path in listed if path.exists() for line in _one_line_sources(path)]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822(stanza)
            if "deb" not in fields.get("Types", "").split():
                continue
            components = fields.get("Components", "main")
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    if suite.startswith(SUITE):
                        lines.append(f"deb {uri} {suite} {components}")
    return lines


def _one_line_sources(path: Path) -> list[str]:
    found = []
    for raw in path.read_text().splitlines():
        # Drop comments and `[option=value ...]`: mmdebstrap finds Debian's keyring itself.
        text = re.sub(r"\[[^]]*\]", "", raw.split("#", 1)[0])
        words = text.split()
        if len(words) >= 4 and words[0] == "deb" and words[2].startswith(SUITE):
            found.append(" ".join(words))
    return found


def _deb822(stanza: str) -> dict[str, str]:
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


def build_tarball(tarball: Path) -> None:
    """Bootstrap minbase with mmdebstrap, straight into `tarball`."""
    sources = debian_sources()
    if not sources:
        raise BootcError(f"No deb source for {SUITE} in /etc/apt")
    partial = tarball.with_suffix(".partial")
    tools.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            "--quiet",
            SUITE,
            partial,
            *sources,
        ]
    )
    partial.replace(tarball)


def unpack_tarball(tarball: Path, tree: Path) -> None:
    tree.mkdir()
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


def _base_layer(rel: str) -> int:
    for prefix, index in _LAYER_OF_PREFIX:
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


def build_layout(tree: Path, layout: Path, tag: str) -> None:
    """Write the four-layer image of `tree` into `layout` as `tag`."""
    with open_layers(layout, _CHANGES + 1) as (outputs, written):
        layers = [TreeLayer(tree, out) for out in outputs]
        changes = ChangeLayer(layers[_CHANGES])
        for rel, st in _walk(tree):
            layers[_base_layer(rel)].copy(rel)
            changes.visit(rel, st)
        changes.finish()
    tag_image(layout, tag, written)
