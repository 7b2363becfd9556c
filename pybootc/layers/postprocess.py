"""ostree-ext's post-processing of a flattened image, done in place on its directory.

It turns the overlay view of an image into a tree OSTree can commit and deploy:
`/etc` moves to `/usr/etc`, `/var` to `/usr/share/factory/var` where ostree is
too old to seed `/var` itself, the API filesystems are emptied, and what a
commit cannot hold (devices, FIFOs, sockets) is left out with a warning. Both
backends run exactly this, so their trees stay equal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError
from pybootc.layers import tmpfiles
from pybootc.layers.dirfd import DirectoryHandles

# Kept as empty directories: their content belongs to the running system. /sysroot
# is where ostree-prepare-root mounts the physical root.
API_DIRECTORIES = ("run", "tmp", "proc", "sys", "dev", "sysroot")
# What bootc base images carry and ordinary images lack; both have exactly one
# right value, and a deployment root cannot be changed after the commit.
SYSROOT_DIR = "sysroot"
OSTREE_LINK = ("ostree", "sysroot/ostree")
# Empty files container builds inject; an empty one would shadow the real one.
INJECTED_FILES = ("hostname", "resolv.conf")
VAR_TMPFILES = "usr/lib/tmpfiles.d/pybootc-var.conf"


@dataclass(frozen=True)
class PostprocessResult:
    kernel_version: str
    # Paths left out because a commit cannot hold them, one message each.
    warnings: tuple[str, ...]
    # Where /var is seeded by tmpfiles.d lines, the paths the image's tmpfiles.d
    # declares (left out of them); post-processing in memory records what the lines
    # were made from in the commit (ostree/tree_postprocess.py).
    var_declared: frozenset[str] | None = None


# --- the rules' checks and messages, shared with the same rules on a tree in memory
# (ostree/tree_postprocess.py) ---------------------------------------------------------

MODULES = ("usr", "lib", "modules")
OS_RELEASES = ("usr/lib/os-release", "etc/os-release", "usr/etc/os-release")
# Moved out of the way of the deployment's own /etc and /var (the latter only where
# ostree is too old to seed /var from the image).
ETC_MOVE = ("etc", ("usr", "etc"))
VAR_MOVE = ("var", ("usr", "share", "factory", "var"))
FACTORY_VAR = "/usr/share/factory/var"


def the_kernel(versions: Iterable[str]) -> str:
    """The one kernel version of `versions` (those with a regular vmlinuz)."""
    found = sorted(versions)
    if not found:
        raise BootcError("Image is not bootable: no kernel at /usr/lib/modules/<kver>/vmlinuz")
    if len(found) > 1:
        raise BootcError(f"Image is not bootable: several kernels in /usr/lib/modules: {found}")
    return found[0]


def names_an_os(text: str) -> bool:
    """Whether an os-release file's text says which OS it is."""
    return any(line.startswith(("ID=", "PRETTY_NAME=")) for line in text.splitlines())


NO_OS_RELEASE = "Image is not bootable: no ID or PRETTY_NAME in /usr/lib/os-release"
SYSROOT_NOT_A_DIRECTORY = "/sysroot in the image is not a directory"


def check_ostree_link(found: str | None) -> None:
    """Refuse an image's /ostree unless it is the link post-processing would make;
    `found` is its target, None if it is no symlink."""
    name, target = OSTREE_LINK
    if found is None:
        raise BootcError(f"/{name} in the image must be a symlink to {target}")
    if found.rstrip("/") != target:
        raise BootcError(f"/{name} in the image must be a symlink to {target}, not {found}")


def special_file_warning(path: str) -> str:
    return f"Skipping {path}: a device node, FIFO or socket cannot be committed"


def not_a_directory(source: str) -> BootcError:
    return BootcError(f"/{source} in the image is not a directory")


def both_there(source: str, dest: tuple[str, ...]) -> BootcError:
    return BootcError(f"Image has both /{source} and /{'/'.join(dest)}")


def var_tmpfiles_text(lines: Iterable[str]) -> str:
    return (
        "\n".join(["# The image's /var, seeded on first boot (written by pybootc)", *lines]) + "\n"
    )


# --- the rules on a directory ----------------------------------------------------------


def find_kernel(root: Path) -> str:
    """The kernel version of a bootable tree (`usr/lib/modules/<kver>/vmlinuz`)."""
    modules = root.joinpath(*MODULES)
    return the_kernel(
        entry.name
        for entry in (os.scandir(modules) if modules.is_dir() and not modules.is_symlink() else ())
        if entry.is_dir(follow_symlinks=False)
        and os.path.isfile(os.path.join(entry.path, "vmlinuz"))
        and not os.path.islink(os.path.join(entry.path, "vmlinuz"))
    )


def _check_os_release(root: Path) -> None:
    for candidate in OS_RELEASES:
        path = root / candidate
        if (
            path.is_file()
            and not path.is_symlink()
            and names_an_os(path.read_text(errors="replace"))
        ):
            return
    raise BootcError(NO_OS_RELEASE)


def _empty_directory(dirs: DirectoryHandles, name: str) -> None:
    try:
        st = os.lstat(name, dir_fd=dirs.root_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    fd = dirs.get((name,), create=False)
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)


def _add_sysroot(dirs: DirectoryHandles) -> None:
    """Give the tree /sysroot and /ostree -> sysroot/ostree, as bootc base images have.

    Without /sysroot ostree-prepare-root has nowhere to mount the physical root, and
    without /ostree nothing on the booted host finds the sysroot at `/`.
    """
    root_fd = dirs.root_fd
    try:
        st = os.lstat(SYSROOT_DIR, dir_fd=root_fd)
    except FileNotFoundError:
        dirs.get((SYSROOT_DIR,), create=True)
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise BootcError(SYSROOT_NOT_A_DIRECTORY)
    name, target = OSTREE_LINK
    try:
        found: str | None = os.readlink(name, dir_fd=root_fd)
    except FileNotFoundError:
        os.symlink(target, name, dir_fd=root_fd)
        return
    except OSError:
        found = None  # no symlink
    check_ostree_link(found)


def _remove_special_files(fd: int, prefix: str) -> Iterator[str]:
    """Remove every device node, FIFO and socket below `fd`; yield their paths."""
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        path = f"{prefix}/{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                yield from _remove_special_files(child, path)
            finally:
                os.close(child)
        elif not entry.is_file(follow_symlinks=False) and not entry.is_symlink():
            os.unlink(entry.name, dir_fd=fd)
            yield path


def _move(dirs: DirectoryHandles, source: str, dest: tuple[str, ...]) -> bool:
    """Move top-level `source` to `dest`, creating real parent directories; False if absent."""
    try:
        st = os.lstat(source, dir_fd=dirs.root_fd)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise not_a_directory(source)
    parent = dirs.get(dest[:-1], create=True)
    try:
        os.lstat(dest[-1], dir_fd=parent)
    except FileNotFoundError:
        pass
    else:
        raise both_there(source, dest)
    os.rename(source, dest[-1], src_dir_fd=dirs.root_fd, dst_dir_fd=parent)
    # A handle kept for `source` would now be one of the tree at `dest`.
    dirs.forget_below((source,))
    return True


def declared_tmpfiles_paths(root: Path) -> frozenset[str]:
    """The paths the image's own tmpfiles.d already declares (systemd's, packages').

    A second line for one of them makes systemd-tmpfiles log "Duplicate line for
    path" on every boot, so those are left to the image, as bootc does.
    """
    return tmpfiles.declared_paths(root, ignore=(Path(VAR_TMPFILES).name,))


def _var_tmpfiles_lines(var_root: Path, declared: frozenset[str], sub: str = "") -> Iterator[str]:
    """tmpfiles.d lines that recreate the image's /var content on a booted host.

    Depth first in sorted name order: directory order differs by filesystem, and
    this file goes into the commit, which must be the same wherever it was made.
    """
    factory = FACTORY_VAR
    for name in sorted(os.listdir(var_root / sub if sub else var_root)):
        path = f"{sub}/{name}" if sub else name
        full = var_root / path
        st = os.lstat(full)
        if f"/var/{path}" not in declared:
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            yield tmpfiles.line(f"/var/{path}", st, link=link, copy_from=f"{factory}/{path}")
        if stat.S_ISDIR(st.st_mode):
            yield from _var_tmpfiles_lines(var_root, declared, path)


def _write_var_tmpfiles(root: Path) -> None:
    var_root = root / FACTORY_VAR.lstrip("/")
    text = var_tmpfiles_text(_var_tmpfiles_lines(var_root, declared_tmpfiles_paths(root)))
    conf = root / VAR_TMPFILES
    dirs = DirectoryHandles(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
    try:
        parent = dirs.get(tuple(VAR_TMPFILES.split("/")[:-1]), create=True)
        # The checkout's files are hardlinks of the repo's objects: one the image has
        # already is unlinked and made anew, never written through.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(conf.name, dir_fd=parent)
        fd = os.open(
            conf.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent
        )
        os.fchmod(fd, 0o644)  # whatever the umask: the commit must not depend on it
        with os.fdopen(fd, "w") as f:
            f.write(text)
    finally:
        dirs.close()
        os.close(dirs.root_fd)


def _remove_empty_injected(dirs: DirectoryHandles) -> None:
    try:
        etc = dirs.get(("usr", "etc"), create=False)
    except BootcError:
        return
    for name in INJECTED_FILES:
        try:
            st = os.lstat(name, dir_fd=etc)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(name, dir_fd=etc)


def postprocess_tree(root: Path, *, keep_var: bool) -> PostprocessResult:
    """Make the flattened image at `root` committable, in place (ostree-ext's rules)."""
    kernel = find_kernel(root)
    _check_os_release(root)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    dirs = DirectoryHandles(root_fd)
    try:
        for name in API_DIRECTORIES:
            _empty_directory(dirs, name)
        _add_sysroot(dirs)
        warnings = [special_file_warning(path) for path in _remove_special_files(root_fd, "")]
        _move(dirs, *ETC_MOVE)
        moved_var = not keep_var and _move(dirs, *VAR_MOVE)
        if moved_var:
            # The deployment's /var is mounted here from the stateroot.
            dirs.get(("var",), create=True)
        _remove_empty_injected(dirs)
        # Every deployment root looks the same, whatever the image's "." said.
        os.fchown(root_fd, 0, 0)
        os.fchmod(root_fd, 0o755)
    finally:
        dirs.close()
        os.close(root_fd)
    if moved_var:
        _write_var_tmpfiles(root)
    return PostprocessResult(kernel, tuple(warnings))
