"""The benchmark's images, built once and kept under bench/cache/.

The Debian workload comes in three sizes, each an OCI layout with these tags:
- `v1`: the tree in four layers (rootfs.build_layout);
- `v2`: v1 plus one layer of about 10 MB: a one-layer update;
- `other`: the same tree split into other layers: another build of the same OS, whose
  layers share nothing with v1's (their files are the same objects).
Two more workloads hold one large layer each: many files, and a single file, 4 GiB
either way, uncompressed (their point is memory and the disk, not gzip).

A layout is reused while the recipe that built it is unchanged; it is built in a scratch
directory and moved into place only when complete, so an interrupted build is never
taken as cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import rootfs
from layout_writer import WrittenLayer, open_plain_layer

from pybootc import tools
from tests.selinux_support import policy_files

# What the three Debian trees are trimmed to, in MB of regular files (their images are
# smaller: the top layer deletes some). The kernel and its initramfs alone are about
# 45 MB: the smallest tree is twice that.
SIZES = {"S": 100, "M": 250, "L": 800}
UPDATE_BYTES = 10 << 20
LARGE_BYTES = 4 << 30
LARGE_FILE_BYTES = 64 << 10


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    layout: Path
    # The v1 image's regular files, each inode once, as it unpacks: what the disk
    # figures are a multiple of.
    unpacked_bytes: int

    def ref(self, tag: str = "v1") -> str:
        """The image for skopeo and bootc: `oci:LAYOUT:TAG`."""
        return f"oci:{self.layout}:{tag}"

    def umoci_ref(self, tag: str = "v1") -> str:
        return f"{self.layout}:{tag}"

    def manifest(self, tag: str = "v1") -> dict[str, object]:
        index = json.loads((self.layout / "index.json").read_text())
        (entry,) = [
            m
            for m in index["manifests"]
            if m["annotations"]["org.opencontainers.image.ref.name"] == tag
        ]
        found: dict[str, object] = json.loads(self.blob(entry["digest"]).read_text())
        return found

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs/sha256" / digest.removeprefix("sha256:")

    def layers(self, tag: str = "v1") -> list[dict[str, object]]:
        layers = self.manifest(tag)["layers"]
        assert isinstance(layers, list)
        return layers

    def written_layers(self, tag: str = "v1") -> list[WrittenLayer]:
        """The image's layers, with their diff_ids: to build another image on."""
        config = self.manifest(tag)["config"]
        assert isinstance(config, dict)
        diff_ids = json.loads(self.blob(config["digest"]).read_text())["rootfs"]["diff_ids"]
        return [WrittenLayer(d, i) for d, i in zip(self.layers(tag), diff_ids, strict=True)]


def _cached(
    cache: Path,
    name: str,
    recipe: str,
    build: Callable[[Path], dict[str, object]],
    log: Callable[[str], None],
) -> tuple[Path, dict[str, object]]:
    """The layout for `name`, built by `build(scratch_layout)` unless cached for `recipe`;
    with what `build` recorded of it."""
    home = cache / name
    stamp = home / "recipe"
    facts = home / "facts.json"
    layout = home / "layout"
    if stamp.exists() and stamp.read_text() == recipe and facts.exists():
        return layout, json.loads(facts.read_text())
    log(f"Building workload {name} (cached afterwards in {home})")
    scratch = cache / f".{name}.building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    recorded = build(scratch / "layout")
    (scratch / "facts.json").write_text(json.dumps(recorded))
    (scratch / "recipe").write_text(recipe)
    shutil.rmtree(home, ignore_errors=True)
    scratch.rename(home)
    return layout, recorded


def _debian_tree(cache: Path, work: Path, log: Callable[[str], None]) -> Path:
    """The bootable tree, unpacked into `work/tree` (the tarball cached)."""
    tarball = cache / f"debian-{rootfs.SUITE}-bootable.tar"
    stamp = cache / f"debian-{rootfs.SUITE}-bootable.recipe"
    if not tarball.exists() or not stamp.exists() or stamp.read_text() != rootfs.RECIPE:
        log(f"Bootstrapping {rootfs.SUITE} with mmdebstrap into {tarball}")
        rootfs.build_tarball(tarball)
        stamp.write_text(rootfs.RECIPE)
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    rootfs.unpack_tarball(tarball, tree)
    rootfs.make_bootable(tree)
    return tree


def debian(size: str, cache: Path, work: Path, log: Callable[[str], None]) -> Workload:
    target = SIZES[size] << 20

    def build(layout: Path) -> dict[str, object]:
        tree = _debian_tree(cache, work, log)
        try:
            rootfs.trim(tree, target)
            base = rootfs.build_layout(tree, layout, "v1")
            rootfs.add_update(layout, "v2", base, UPDATE_BYTES)
            rootfs.build_layout(tree, layout, "other", rootfs.OTHER_SPLIT)
            return {}
        finally:
            shutil.rmtree(tree, ignore_errors=True)

    name = f"debian-{size}"
    layout, facts = _cached(cache, name, f"{rootfs.RECIPE} {size}", build, log)
    return Workload(
        name,
        f"Debian {rootfs.SUITE}, trimmed to about {SIZES[size]} MB of files, 4 layers",
        layout,
        _image_bytes(cache / name, facts, log),
    )


def _image_bytes(home: Path, facts: dict[str, object], log: Callable[[str], None]) -> int:
    """The unpacked size of the v1 image in `home`: its regular files, each inode once,
    as `umoci raw unpack` lays the image out. Measured once, into the layout's facts.

    Not the size of the tree the layers were made from: the top layer deletes some of
    its files, as a build step does, and the image holds 6%, 9% and 16% fewer bytes than
    its tree at S, M and L.
    """
    if "image_bytes" not in facts:
        log(f"Unpacking {home.name}:v1 to measure its size")
        with tempfile.TemporaryDirectory(dir=home) as scratch:
            tree = Path(scratch) / "rootfs"
            tools.run(["umoci", "raw", "unpack", "--image", f"{home / 'layout'}:v1", tree])
            facts["image_bytes"] = rootfs.unpacked_size(tree)
        # Whole or not at all: a facts.json cut short would stop every later run.
        (home / "facts.json.new").write_text(json.dumps(facts))
        (home / "facts.json.new").replace(home / "facts.json")
    return int(str(facts["image_bytes"]))


# libostree runs the deployment's own `semodule` (through bwrap) when it deploys a
# labelled image over another. The trimmed tree may keep no shell to run a script, so the
# stand-in is a static program that does nothing (its `--help` names no
# --rebuild-if-modules-changed, and libostree then rebuilds nothing).
_SEMODULE_C = "int main(void) { return 0; }\n"


def _semodule(work: Path) -> bytes:
    source, program = work / "semodule.c", work / "semodule"
    source.write_text(_SEMODULE_C)
    tools.run(["gcc", "-static", "-Os", "-o", program, source])
    return program.read_bytes()


def _link_blobs(source: str, dest: str) -> None:
    if Path(source).parent.name == "sha256":
        os.link(source, dest)
    else:
        shutil.copy2(source, dest)


def labelled(cache: Path, work: Path, log: Callable[[str], None]) -> Workload:
    """The Debian workload at M with an SELinux policy, as every Fedora and CentOS bootc
    image has one: the host's reference policy (what libostree's SePolicy reads of it)
    in one more layer. Tags `v1` and `v2` as the workload's, with that layer."""
    plain = debian("M", cache, work, log)
    policy = {str(path.relative_to("/")): (path.read_bytes(), 0o644) for path in policy_files()}
    recipe = hashlib.sha256(
        b"".join(name.encode() + data for name, (data, _) in sorted(policy.items()))
    ).hexdigest()

    def build(layout: Path) -> dict[str, object]:
        # The blobs never change once written, so they are linked; index.json is
        # rewritten in place as tags move, so it is copied.
        shutil.copytree(plain.layout, layout, copy_function=_link_blobs)
        base = plain.written_layers()
        work.mkdir(parents=True, exist_ok=True)
        files = {**policy, "usr/bin/semodule": (_semodule(work), 0o755)}
        layer = rootfs.add_files(layout, "v1", base, files)
        rootfs.add_update(layout, "v2", [*base, layer], UPDATE_BYTES)
        return {}

    name = "debian-M-labelled"
    layout, facts = _cached(cache, name, f"{rootfs.RECIPE} M labelled-1 {recipe}", build, log)
    return Workload(
        name,
        f"{plain.description}, and the host's SELinux policy in a fifth",
        layout,
        _image_bytes(cache / name, facts, log),
    )


def _large_layer(layout: Path, files: int) -> None:
    """One uncompressed layer of LARGE_BYTES in `files` files (incompressible data,
    made in chunks so memory stays small), on a bootable sample base."""
    from pybootc.sample.image import sample_image
    from pybootc.sample.ocibuild import OciLayout, compress, sha256_digest, write_tar

    base = sample_image("1")
    descriptors, diff_ids = [], []
    oci = OciLayout(layout)
    for spec_layer in base.layers:
        raw = write_tar(spec_layer)
        blob = compress(raw, spec_layer.compression)
        descriptors.append(
            {
                "mediaType": spec_layer.compression.media_type,
                "digest": oci.put_blob(blob),
                "size": len(blob),
            }
        )
        diff_ids.append(sha256_digest(raw))
    per_file = LARGE_BYTES // files
    with open_plain_layer(layout) as (tar, written):
        tar.addfile(_dir("srv"))
        tar.addfile(_dir("srv/large"))
        for index in range(files):
            info = tarfile.TarInfo(f"srv/large/{index:06d}")
            info.size, info.mode, info.mtime = per_file, 0o644, 1_750_000_000
            tar.addfile(info, _Noise(f"{files}-{index}", per_file))
    descriptors.append(written[0].descriptor)
    diff_ids.append(written[0].diff_id)
    OciLayout(layout).add_manifest("v1", base, descriptors, diff_ids)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_750_000_000
    return info


class _Noise(io.RawIOBase):
    """`size` bytes that do not compress, made as they are read."""

    def __init__(self, seed: str, size: int) -> None:
        self._seed = seed.encode()
        self._left = size
        self._block = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        out = bytearray()
        while len(out) < size:
            chunk = hashlib.shake_256(self._seed + self._block.to_bytes(8, "big")).digest(1 << 20)
            self._block += 1
            out += chunk
        data = bytes(out[:size])
        self._left -= size
        return data


def large(kind: str, cache: Path, log: Callable[[str], None]) -> Workload:
    files = LARGE_BYTES // LARGE_FILE_BYTES if kind == "many" else 1

    def build(out: Path) -> dict[str, object]:
        _large_layer(out, files)
        return {}

    layout, _ = _cached(cache, f"large-{kind}", f"large-v1 {files}", build, log)
    what = f"{files:,} files of 64 KiB" if files > 1 else "one file"
    return Workload(f"large-{kind}", f"one 4 GiB layer: {what}", layout, LARGE_BYTES)
