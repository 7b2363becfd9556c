"""Post-processing (ostree-ext's rules), on synthetic trees and on a real deployment.

The deployed commit must equal the kernel's overlay view of the same image
with the same post-processing applied.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pybootc import tools
from pybootc.errors import BootcError
from pybootc.layers import tmpfiles
from pybootc.layers.listing import diff_listings, list_tree
from pybootc.layers.postprocess import VAR_TMPFILES, postprocess_tree
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import KERNEL_VERSION, sample_image
from pybootc.sample.ocibuild import Entry, Kind, OciLayout, file, layer
from pybootc.stores.bootc_storage import bootc_storage
from pybootc.stores.commit import ostree_seeds_var
from tests.backend_support import install, ok, publish
from tests.support import Registry


def bootable(root: Path) -> Path:
    kernel = root / f"usr/lib/modules/{KERNEL_VERSION}"
    kernel.mkdir(parents=True)
    (kernel / "vmlinuz").write_bytes(b"kernel")
    (root / "usr/lib/os-release").write_text("ID=test\n")
    return root


def test_etc_moves_to_usr_etc_and_var_to_the_factory(tmp_path: Path) -> None:
    root = bootable(tmp_path / "root")
    (root / "etc/apt").mkdir(parents=True)
    (root / "etc/apt/sources.list").write_text("deb x\n")
    (root / "var/lib/app").mkdir(parents=True)
    (root / "var/lib/app/state").write_text("s")
    os.symlink("../state", root / "var/lib/app/link")
    postprocess_tree(root, keep_var=False)
    assert (root / "usr/etc/apt/sources.list").read_text() == "deb x\n"
    assert not (root / "etc").exists()
    assert (root / "usr/share/factory/var/lib/app/state").read_text() == "s"
    assert (root / "var").is_dir() and not any((root / "var").iterdir())
    lines = (root / VAR_TMPFILES).read_text().splitlines()
    assert "d /var/lib 0755 0 0 - -" in lines
    assert "C /var/lib/app/state - - - - /usr/share/factory/var/lib/app/state" in lines
    assert "L /var/lib/app/link - - - - ../state" in lines


def test_what_post_processing_makes_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    """The commit must be the same wherever it is made: on a host whose root runs
    under umask 077 (hardened hosts do) the directories and the tmpfiles.d file that
    post-processing adds are 0755 and 0644 all the same."""
    listings = []
    for umask in (0o022, 0o077):
        root = bootable(tmp_path / f"root-{umask:o}")
        (root / "var/lib/app").mkdir(parents=True)
        previous = os.umask(umask)
        try:
            postprocess_tree(root, keep_var=False)
        finally:
            os.umask(previous)
        listings.append(list_tree(root))
    assert listings[0] == listings[1]
    modes = {entry.path: entry.mode for entry in listings[0]}
    assert modes["sysroot"] & 0o7777 == 0o755
    assert modes["var"] & 0o7777 == 0o755
    assert modes[VAR_TMPFILES] & 0o7777 == 0o644


def test_var_is_kept_where_ostree_seeds_it(tmp_path: Path) -> None:
    root = bootable(tmp_path / "root")
    (root / "var/lib").mkdir(parents=True)
    postprocess_tree(root, keep_var=True)
    assert (root / "var/lib").is_dir() and not (root / "usr/share/factory").exists()


def test_api_directories_are_emptied_and_devices_elsewhere_dropped(tmp_path: Path) -> None:
    root = bootable(tmp_path / "root")
    for name in ("run", "tmp", "proc", "sys", "dev"):
        (root / name / "sub").mkdir(parents=True)
        (root / name / "sub/file").write_text("x")
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    (root / "srv").mkdir()
    os.mkfifo(root / "srv/fifo")
    os.mknod(root / "srv/disk", 0o660 | 0o060000, os.makedev(7, 0))
    result = postprocess_tree(root, keep_var=False)
    for name in ("run", "tmp", "proc", "sys", "dev"):
        assert (root / name).is_dir() and not any((root / name).iterdir())
    assert not (root / "srv/fifo").exists() and not (root / "srv/disk").exists()
    assert sorted(result.warnings) == [
        "Skipping /srv/disk: a device node, FIFO or socket cannot be committed",
        "Skipping /srv/fifo: a device node, FIFO or socket cannot be committed",
    ]


def test_only_empty_injected_files_are_removed(tmp_path: Path) -> None:
    root = bootable(tmp_path / "root")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("")
    (root / "etc/resolv.conf").write_text("nameserver 1.1.1.1\n")
    postprocess_tree(root, keep_var=False)
    assert not (root / "usr/etc/hostname").exists()
    assert (root / "usr/etc/resolv.conf").exists()


def test_an_image_without_a_kernel_is_not_bootable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/modules/6.1").mkdir(parents=True)
    with pytest.raises(BootcError, match="not bootable"):
        postprocess_tree(root, keep_var=False)


def test_a_symlinked_usr_cannot_redirect_the_etc_move(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    bootable(root)
    (root / "etc").mkdir()
    shutil.move(root / "usr", tmp_path / "realusr")
    os.symlink(tmp_path / "realusr", root / "usr")
    with pytest.raises(BootcError):
        postprocess_tree(root, keep_var=False)
    assert not any(outside.iterdir()) and not (tmp_path / "realusr/etc").exists()


def _without_links(tree: list) -> list:  # type: ignore[type-arg]
    # OSTree stores content once per distinct file, so it keeps no hardlink identity.
    return [dataclasses.replace(entry, link_group=None) for entry in tree]


@pytest.mark.registry
def test_deployed_tree_equals_the_kernel_view_post_processed(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    fifo = layer(file("srv/readme", "r"), Entry("srv/fifo", Kind.FIFO, mode=0o644))
    image = publish(registry, tmp_path, sample_image("1.0", extra=(fifo,)), repo="pybootc/post")
    proc = install(target, image.docker)
    ok(proc)
    assert (
        "warning: Skipping /srv/fifo: a device node, FIFO or socket cannot be committed"
        in proc.stderr
    )

    deployment = Sysroot.open(target).deployments()[0]
    checkout = tmp_path / "checkout"
    subprocess.run(
        [
            "ostree",
            f"--repo={target}/ostree/repo",
            "checkout",
            "--force-copy",
            deployment.checksum,
            str(checkout),
        ],
        check=True,
    )
    storage = bootc_storage(target)
    kernel_copy = tmp_path / "kernel"
    mountpoint = storage.mount(image.ref)
    try:
        subprocess.run(["cp", "-a", f"{mountpoint}/.", str(kernel_copy)], check=True)
    finally:
        storage.unmount(image.ref)
    # libostree 2024.3 and later seed /var from the commit's own; older ones get
    # tmpfiles.d lines and the factory copy.
    seeds_var = ostree_seeds_var()
    postprocess_tree(kernel_copy, keep_var=seeds_var)
    expected, actual = _without_links(list_tree(kernel_copy)), _without_links(list_tree(checkout))
    assert not diff_listings(expected, actual), "\n".join(diff_listings(expected, actual))
    paths = {e.path for e in actual}
    var_seed = (
        {"var/lib/sample/state"}
        if seeds_var
        else {"usr/share/factory/var/lib/sample/state", VAR_TMPFILES}
    )
    assert {"usr/etc/apt/sources.list", *var_seed} <= paths
    assert not (seeds_var and {"usr/share/factory/var", VAR_TMPFILES} & paths)
    assert (
        not {
            "etc",
            "usr/etc/hostname",
            "usr/etc/resolv.conf",
            "tmp/leftover",
            "dev/null",
            "srv/fifo",
        }
        & paths
    )
    assert not any(
        p.startswith(("overlay", "backingFsBlockDev")) or "backingFsBlockDev" in p for p in paths
    )
    shutil.rmtree(checkout)


def _var_tree(root: Path, order: list[str]) -> Path:
    """A bootable tree whose /var directories are created in `order`."""
    bootable(root)
    for name in order:
        (root / "var" / name / "sub").mkdir(parents=True)
        (root / "var" / name / "sub/file").write_text(name)
    return root


def test_generated_var_tmpfiles_do_not_depend_on_directory_order(tmp_path: Path) -> None:
    from tests.sysroot_support import scratch_tmpfs

    # tmpfs lists a directory newest first: the two trees list /var in opposite orders.
    with scratch_tmpfs(tmp_path / "mnt") as mnt:
        names = ["cache", "lib", "log", "spool"]
        first = _var_tree(mnt / "a", names)
        second = _var_tree(mnt / "b", names[::-1])
        assert os.listdir(first / "var") != os.listdir(second / "var")
        postprocess_tree(first, keep_var=False)
        postprocess_tree(second, keep_var=False)
        generated = (first / VAR_TMPFILES).read_bytes()
        assert generated == (second / VAR_TMPFILES).read_bytes()
        paths = [line.split()[1] for line in generated.decode().splitlines()[1:]]
        assert paths[:3] == ["/var/cache", "/var/cache/sub", "/var/cache/sub/file"]
        assert paths == sorted(paths)


def test_paths_the_image_declares_in_tmpfiles_d_get_no_second_line(tmp_path: Path) -> None:
    root = bootable(tmp_path / "root")
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d/legacy.conf").write_text("L /var/lock - - - - ../run/lock\n")
    (root / "etc/tmpfiles.d").mkdir(parents=True)
    (root / "etc/tmpfiles.d/app.conf").write_text("d /var/lib/app\\x20dir 0700 - - -\n")
    (root / "var/lib/app dir").mkdir(parents=True)
    (root / "var/lib/app dir/state").write_text("s")
    os.symlink("../run/lock", root / "var/lock")
    postprocess_tree(root, keep_var=False)
    lines = (root / VAR_TMPFILES).read_text().splitlines()[1:]
    assert lines == [
        "d /var/lib 0755 0 0 - -",
        r'C "/var/lib/app dir/state" - - - - /usr/share/factory/var/lib/app\x20dir/state',
    ]


def test_a_tmpfiles_d_symlink_is_read_inside_the_image_not_on_the_host(tmp_path: Path) -> None:
    """Linked tmpfiles.d files name paths of the image, as systemd-tmpfiles reads them on
    the booted host: an absolute link must not read the file of that name on the host
    that post-processes the image."""
    host = tmp_path / "host-only.conf"
    host.write_text("d /var/lib/from-host 0755 - - -\n")
    root = bootable(tmp_path / "root")
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    (root / "usr/share/pkg").mkdir(parents=True)
    (root / "usr/share/pkg/in-image.conf").write_text("d /var/lib/in-image 0755 - - -\n")
    (root / "usr/share/pkg/relative.conf").write_text("d /var/lib/relative 0755 - - -\n")
    os.symlink("/usr/share/pkg/in-image.conf", root / "usr/lib/tmpfiles.d/in-image.conf")
    os.symlink("../../share/pkg/relative.conf", root / "usr/lib/tmpfiles.d/relative.conf")
    # The same path exists on the host; in the image it does not.
    os.symlink(host, root / "usr/lib/tmpfiles.d/host.conf")
    os.symlink("/../../.." + str(host), root / "usr/lib/tmpfiles.d/climbing.conf")
    os.symlink("loop.conf", root / "usr/lib/tmpfiles.d/loop.conf")
    for name in ("in-image", "relative", "from-host"):
        (root / "var/lib" / name).mkdir(parents=True)
    postprocess_tree(root, keep_var=False)
    lines = (root / VAR_TMPFILES).read_text().splitlines()[1:]
    assert lines == ["d /var/lib 0755 0 0 - -", "d /var/lib/from-host 0755 0 0 - -"]


def test_a_tmpfiles_d_path_resolves_as_the_kernel_would_with_the_image_as_root(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/f.conf").write_text("F")
    (root / "real.conf").write_text("R")
    host = tmp_path / "host.conf"
    host.write_text("H")
    links = {"abs": "/a/b/f.conf", "a/rel": "b/f.conf", "dirlink": "/a/", "hostlink": str(host)}
    links |= {"null": "/dev/null", "loop": "loop"}
    for name, target in links.items():
        os.symlink(target, root / name)
    cases = {
        "abs": "F",
        "a/rel": "F",
        "dirlink/b/f.conf": "F",
        "dirlink/../real.conf": "R",  # ".." of where the link led, as the kernel
        "../../a/b/f.conf": "F",  # ".." stops at the root
        "a//b///f.conf": "F",
        "real.conf/../a/b/f.conf": None,  # ENOTDIR: a file is no directory
        "real.conf/": None,
        "hostlink": None,
        "null": None,  # a device is no file to read
        "loop": None,
        "a": None,
    }
    assert {rel: tmpfiles.read_in_root(root, rel) for rel in cases} == cases


def test_sysroot_and_the_ostree_link_are_added_as_bootc_base_images_have_them(
    tmp_path: Path,
) -> None:
    root = bootable(tmp_path / "root")
    postprocess_tree(root, keep_var=False)
    assert (root / "sysroot").is_dir() and not any((root / "sysroot").iterdir())
    assert os.readlink(root / "ostree") == "sysroot/ostree"

    kept = bootable(tmp_path / "kept")
    (kept / "sysroot/leftover").mkdir(parents=True)
    os.symlink("sysroot/ostree/", kept / "ostree")
    postprocess_tree(kept, keep_var=False)
    assert not any((kept / "sysroot").iterdir())
    assert os.readlink(kept / "ostree") == "sysroot/ostree/"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: (r / "sysroot").write_text("x"), "/sysroot in the image is not a directory"),
        (lambda r: (r / "ostree").mkdir(), "/ostree in the image must be a symlink"),
        (lambda r: os.symlink("elsewhere", r / "ostree"), "not elsewhere"),
    ],
)
def test_a_sysroot_or_ostree_of_another_kind_is_refused(
    tmp_path: Path, make: object, message: str
) -> None:
    root = bootable(tmp_path / "root")
    make(root)  # type: ignore[operator]
    with pytest.raises(BootcError, match=message):
        postprocess_tree(root, keep_var=False)


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_generated_file_the_image_has_already_is_replaced_not_written_through(
    target: Path, tmp_path: Path, backend: str
) -> None:
    """The checkout post-processing works on is hardlinks of the repo's objects: the
    tmpfiles.d file it writes, which an image made from a pybootc host carries, must
    be made anew, or the object (and every deployment of it) would change."""
    stale = b"d /var/stale 0755 root root -\n"
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0", extra=(layer(file(VAR_TMPFILES, stale)),)))
    ok(install(target, layout.ref("v1"), backend=backend))
    fsck = subprocess.run(
        ["ostree", "fsck", "--quiet", f"--repo={target}/ostree/repo"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert fsck.returncode == 0, fsck.stderr
    (root,) = target.glob("ostree/deploy/*/deploy/*.0")
    written = (root / VAR_TMPFILES).read_bytes()
    assert written == stale if ostree_seeds_var() else written.startswith(b"# The image's /var")


# Names a /var file can have that a tmpfiles.d line must spell with care.
_AWKWARD_NAMES = ("a b", "tab\there", 'q"uote', "apo'strophe", "back\\slash", "per%cent", "é", "-")


def test_seed_lines_read_back_as_the_names_they_were_made_of(tmp_path: Path) -> None:
    # systemd 252 decodes no C escape in the path field (`\x20` made `ax20b`), later
    # versions do; both decode them in the argument, and expand % specifiers.
    root, factory = tmp_path / "root", "/usr/share/factory/var"
    (root / factory.lstrip("/")).mkdir(parents=True)
    (root / "var").mkdir()
    lines = []
    for n, name in enumerate(_AWKWARD_NAMES):
        source = root / factory.lstrip("/") / name
        source.write_text(str(n))
        lines.append(
            tmpfiles.line(f"/var/{name}", source.stat(), link=None, copy_from=f"{factory}/{name}")
        )
        lines.append(
            tmpfiles.line(f"/var/{name} link", source.lstat(), link=f" {name}/", copy_from=None)
        )
    made = (root / "usr/share").stat()
    lines.append(tmpfiles.line("/var/a dir", made, link=None, copy_from=None))
    conf = tmp_path / "seed.conf"
    conf.write_text("\n".join(lines) + "\n")
    tools.run(["systemd-tmpfiles", "--create", f"--root={root}", conf])
    for n, name in enumerate(_AWKWARD_NAMES):
        assert (root / "var" / name).read_text() == str(n)
        assert os.readlink(root / "var" / f"{name} link") == f" {name}/"
    assert (root / "var/a dir").is_dir()
    expected = {*_AWKWARD_NAMES, *(f"{name} link" for name in _AWKWARD_NAMES), "a dir"}
    assert set(os.listdir(root / "var")) == expected
    # And the paths the lines declare, as an image's own tmpfiles.d is read.
    assert tmpfiles.declared_in(conf.read_text()) == {f"/var/{name}" for name in expected}
