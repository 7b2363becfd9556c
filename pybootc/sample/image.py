"""A small bootable OS image, built without a container engine.

The demo, the tests and the benchmarks deploy it: a kernel in
/usr/lib/modules, os-release, /etc and /var content, hardlinks, a setuid
binary with a file capability, a whiteout, an opaque directory, a zstd layer.
"""

from __future__ import annotations

from collections.abc import Mapping

from pybootc.sample.ocibuild import (
    Compression,
    Entry,
    ImageSpec,
    Kind,
    Layer,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)

KERNEL_VERSION = "6.1.0-pybootc"
# A version 2 file capability granting cap_net_raw, as ping carries.
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def base_layer(*, kernel: bool = True) -> Layer:
    entries: list[Entry] = [
        directory("usr"),
        directory("usr/bin"),
        directory("usr/lib"),
        symlink("bin", "usr/bin"),
        symlink("lib", "usr/lib"),
        file("usr/bin/sh", b"#!pybootc sample shell\n", mode=0o755),
        hardlink("usr/bin/dash", "usr/bin/sh", mode=0o755),
        file("usr/lib/os-release", 'ID=pybootc-sample\nPRETTY_NAME="pybootc sample"\n'),
        directory("etc"),
        symlink("etc/os-release", "../usr/lib/os-release"),
        directory("etc/apt"),
        file("etc/apt/sources.list", "deb old\n"),
        file("etc/hostname", ""),
        file("etc/resolv.conf", ""),
        directory("var"),
        directory("var/lib"),
        directory("var/lib/sample"),
        file("var/lib/sample/state", "seeded\n"),
        directory("run"),
        directory("tmp", mode=0o1777),
        file("tmp/leftover", "build junk"),
        directory("dev"),
        Entry("dev/null", Kind.CHAR, devmajor=1, devminor=3, mode=0o666),
    ]
    if kernel:
        entries += [
            directory("usr/lib/modules"),
            directory(f"usr/lib/modules/{KERNEL_VERSION}"),
            file(f"usr/lib/modules/{KERNEL_VERSION}/vmlinuz", b"\x7fKERNEL" * 512),
            file(f"usr/lib/modules/{KERNEL_VERSION}/initramfs.img", b"INITRAMFS" * 64),
        ]
    return layer(*entries)


def sample_image(
    version: str,
    *,
    kernel: bool = True,
    architecture: str = "amd64",
    extra: tuple[Layer, ...] = (),
    compression: Compression = Compression.ZSTD,
    created: str | None = "2026-01-01T00:00:00Z",
    labels: Mapping[str, str] = {},
) -> ImageSpec:
    """The sample OS at `version`: its motd and a file under /usr say which."""
    return ImageSpec(
        (
            base_layer(kernel=kernel),
            layer(
                file(
                    "usr/bin/ping",
                    b"ping",
                    mode=0o4755,
                    xattrs={"security.capability": CAP_NET_RAW},
                ),
                whiteout("usr/bin/dash"),
                opaque("etc/apt"),
                file("etc/apt/sources.list", "deb new\n"),
                compression=compression,
            ),
            layer(
                file("etc/motd", f"Welcome to pybootc sample {version}\n"),
                file("usr/share/pybootc-sample-version", f"{version}\n"),
            ),
            *extra,
        ),
        architecture=architecture,
        labels={"org.opencontainers.image.version": version, **labels},
        created=created,
    )
