"""Commits, refs and commit metadata in an OSTree repo, through libostree.

Owns committing a finished tree the way ostree-ext does (one transaction, SELinux labels
from the image's own policy, the image's created time)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError
from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.xattrs import bytes_of, labelling_callback


@contextmanager
def libostree_errors(what: str) -> Iterator[None]:
    """Turn a GLib.Error from libostree into a BootcError that says `what` failed."""
    try:
        yield
    except GLib.Error as err:
        raise BootcError(str(err.message), context=(what,)) from err


# How often (in paths) a commit says how far it has got.
_REPORT_EVERY = 512


def _counting_filter(
    counted: Callable[[int], None],
) -> Callable[..., OSTree.RepoCommitFilterResult]:
    """A commit filter that lets every path in and tells `counted` how many it has seen."""
    seen = 0

    def each_path(*_: object) -> OSTree.RepoCommitFilterResult:
        nonlocal seen
        seen += 1
        if seen % _REPORT_EVERY == 0:
            counted(seen)
        return OSTree.RepoCommitFilterResult.ALLOW

    return each_path


def _commit_modifier(
    tree: Path, selinux_policy: Path | None, counted: Callable[[int], None] | None
) -> OSTree.RepoCommitModifier:
    flags = OSTree.RepoCommitModifierFlags.NONE
    # The filter costs a call into Python per path: only when someone is watching.
    each_path = _counting_filter(counted) if counted is not None else None
    modifier = OSTree.RepoCommitModifier.new(flags, each_path, None)
    policy = load_sepolicy(selinux_policy) if selinux_policy is not None else None
    if policy is not None:
        # Not set_sepolicy(): libostree 2022.7 then appends the label to the other
        # xattrs unsorted, and `ostree fsck` calls the object corrupt (see xattrs.py).
        modifier.set_xattr_callback(labelling_callback(tree, policy), None)
    return modifier


def load_sepolicy(root: Path) -> OSTree.SePolicy | None:
    """The SELinux policy of the tree at `root`, None if it names none.

    SePolicy reads etc/selinux/config, else usr/etc/selinux/config, under the root. A
    policy that is absent or SELINUX=disabled has no name and labels nothing, which is
    what ostree-ext does with such an image too. Loading one sets libselinux's policy
    root for the whole process."""
    config = root / "etc/selinux/config"
    if not (root / "etc/selinux").exists():
        config = root / "usr/etc/selinux/config"
    if config.is_file():
        # libostree 2022.7 (and upstream's today) dereferences a NULL policy root for
        # a config that enables SELinux with no SELINUXTYPE: the process dies.
        lines = config.read_text(errors="replace").splitlines()
        enabled = any(
            line.startswith("SELINUX=") and line[8:].lower().startswith(("enforcing", "permissive"))
            for line in lines
        )
        if enabled and not any(line.startswith("SELINUXTYPE=") for line in lines):
            raise BootcError(_NO_POLICY_TYPE)
    with libostree_errors(f"Loading the SELinux policy in {root}"):
        policy = OSTree.SePolicy.new(Gio.File.new_for_path(str(root)), None)
    return policy if policy.get_name() else None


_NO_POLICY_TYPE = "The image's /etc/selinux/config enables SELinux, but names no SELINUXTYPE"


@contextmanager
def transaction(repo: OSTree.Repo, what: str) -> Iterator[list[str]]:
    """A libostree transaction around the block, committed when it ends, aborted if it
    fails. libostree writes its objects to a staging directory and syncs the filesystem
    once, when the transaction is committed (per-object-fsync is off by default).

    Commits the block appends to the list it is given are marked partial until the
    transaction has landed: commit_transaction moves the new objects into place in no
    particular order, so killed half-way it could leave a commit without its tree. A
    partial commit is one fsck does not hold against the repo, and a retry writes it
    again.
    """
    commits: list[str] = []
    with libostree_errors(what):
        repo.prepare_transaction(None)
        try:
            yield commits
            for checksum in commits:
                repo.mark_commit_partial(checksum, True)
            repo.commit_transaction(None)
        except BaseException:
            # An abort that fails too must not hide why the transaction failed.
            with contextlib.suppress(GLib.Error):
                repo.abort_transaction(None)
            raise
        for checksum in commits:
            repo.mark_commit_partial(checksum, False)


# Files are never adopted (libostree's CONSUME): measured on libostree 2022.7, an
# adopted file is rename()d into objects/, *replacing* an object that exists already,
# so the old inode that deployments hardlink leaves the repo and every update would
# leave the previous deployment a private copy. A tree checked out from objects is
# committed with that checkout's devino cache instead, which names its objects without
# reading or moving them.
@dataclass(frozen=True)
class CommitInfo:
    """What a commit records besides its tree: its subject, its a{sv} metadata, and its
    timestamp (seconds since the epoch: the image's created time)."""

    subject: str
    metadata: Mapping[str, GLib.Variant]
    timestamp: int


def commit_directory(
    repo: OSTree.Repo,
    tree: Path,
    *,
    info: CommitInfo,
    selinux_policy: Path | None,
    parent: str | None = None,
    counted: Callable[[int], None] | None = None,
    devino: OSTree.RepoDevInoCache | None = None,
) -> str:
    """Commit the directory `tree` (its root's own mode and xattrs included), recording
    `info`; return the commit checksum.

    With `selinux_policy` (a root that
    holds etc/selinux or usr/etc/selinux) every path gets the label that policy gives it.
    `counted`
    is told how many paths have been committed, now and then. `devino`, the cache of the
    checkout the tree was made from, names the objects of the files it still has.
    """
    modifier = _commit_modifier(tree, selinux_policy, counted)
    if devino is not None:
        modifier.set_devino_cache(devino)
    with transaction(repo, f"Committing {tree}") as commits:
        mtree = OSTree.MutableTree.new()
        repo.write_directory_to_mtree(Gio.File.new_for_path(str(tree)), mtree, modifier, None)
        commits.append(commit_mtree(repo, mtree, info, parent=parent))
    return commits[0]


def commit_mtree(
    repo: OSTree.Repo, mtree: OSTree.MutableTree, info: CommitInfo, *, parent: str | None = None
) -> str:
    """Write `mtree` and a commit of it recording `info`, inside the caller's
    transaction; the commit checksum."""
    _, root = repo.write_mtree(mtree, None)
    metadata = GLib.Variant("a{sv}", dict(info.metadata))
    _, checksum = repo.write_commit_with_time(
        parent, info.subject, None, metadata, root, info.timestamp, None
    )
    return str(checksum)


def set_ref(repo: OSTree.Repo, ref: str, checksum: str | None) -> None:
    """Point `ref` at `checksum`, or delete it when `checksum` is None."""
    with libostree_errors(f"Setting ref {ref}"):
        repo.set_ref_immediate(None, ref, checksum, None)


def list_refs(repo: OSTree.Repo, prefix: str | None = None) -> dict[str, str]:
    """Refs (full names) under the path `prefix` (whole components only), with commits."""
    # list_refs() strips the prefix from the names; list_refs_ext() keeps them whole.
    wanted = prefix.rstrip("/") if prefix else None
    with libostree_errors("Listing refs"):
        _, refs = repo.list_refs_ext(wanted, OSTree.RepoListRefsExtFlags.NONE, None)
    return {str(name): str(checksum) for name, checksum in refs.items()}


def resolve_ref(repo: OSTree.Repo, ref: str) -> str | None:
    """The commit `ref` points at, or None when there is no such ref."""
    with libostree_errors(f"Resolving ref {ref}"):
        _, checksum = repo.resolve_rev(ref, True)
    return None if checksum is None else str(checksum)


def _value(variant: GLib.Variant) -> object:
    if variant.get_type_string() == "ay":
        return bytes_of(variant)
    return variant.unpack()


def _unpack_vardict(vardict: GLib.Variant | None) -> dict[str, object]:
    if vardict is None:
        return {}
    unpacked: dict[str, object] = {}
    for i in range(vardict.n_children()):
        entry = vardict.get_child_value(i)
        key = str(entry.get_child_value(0).get_string())
        unpacked[key] = _value(entry.get_child_value(1).get_variant())
    return unpacked


def _load_commit(repo: OSTree.Repo, checksum: str) -> GLib.Variant:
    with libostree_errors(f"Reading commit {checksum}"):
        _, commit, _ = repo.load_commit(checksum)
    return commit


def read_commit_metadata(repo: OSTree.Repo, checksum: str) -> dict[str, object]:
    """The commit's metadata, unpacked to Python values (`ay` as bytes)."""
    return _unpack_vardict(_load_commit(repo, checksum).get_child_value(0))


def commit_timestamp(repo: OSTree.Repo, checksum: str) -> int:
    """The commit's timestamp in seconds since the epoch (stored big-endian)."""
    return int(OSTree.commit_get_timestamp(_load_commit(repo, checksum)))


def set_detached_metadata(
    repo: OSTree.Repo, checksum: str, metadata: Mapping[str, GLib.Variant]
) -> None:
    """Replace the commit's detached metadata (ostree-ext keeps cached updates there)."""
    with libostree_errors(f"Writing detached metadata of {checksum}"):
        repo.write_commit_detached_metadata(checksum, GLib.Variant("a{sv}", dict(metadata)), None)


def read_detached_metadata(repo: OSTree.Repo, checksum: str) -> dict[str, object]:
    """The commit's detached metadata, unpacked; empty when it has none."""
    with libostree_errors(f"Reading detached metadata of {checksum}"):
        _, metadata = repo.read_commit_detached_metadata(checksum, None)
    return _unpack_vardict(metadata)


def read_directory(repo: OSTree.Repo, commit: str, path: str) -> dict[str, bytes] | None:
    """The regular files directly in `path` of the commit, by name; None if there is no
    such directory. Read from the repo, so nothing needs checking out."""
    with libostree_errors(f"Reading {path} in commit {commit}"):
        _, root, _ = repo.read_commit(commit, None)
        directory = root.resolve_relative_path(path)
        kind = directory.query_file_type(Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        if kind == Gio.FileType.UNKNOWN:
            return None
        if kind != Gio.FileType.DIRECTORY:
            raise BootcError(f"{path} in commit {commit} is not a directory")
        files: dict[str, bytes] = {}
        children = directory.enumerate_children(
            "standard::name,standard::type", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None
        )
        for info in iter(children.next_file, None):
            if info.get_file_type() == Gio.FileType.REGULAR:
                child = directory.get_child(info.get_name())
                child.ensure_resolved()
                # Not Gio's load_contents: a RepoFile's stream is no GFileInputStream.
                _, stream, _, _ = repo.load_file(child.get_checksum(), None)
                files[info.get_name()] = read_stream(stream)
        return files


def read_stream(stream: Gio.InputStream) -> bytes:
    """All of `stream`, which is closed afterwards."""
    chunks = []
    while chunk := stream.read_bytes(1 << 16, None).get_data():
        chunks.append(chunk)
    stream.close(None)
    return b"".join(chunks)


def root_tree_checksum(repo: OSTree.Repo, commit: str) -> str:
    """A checksum of the commit's root dirtree and dirmeta: equal for equal trees,
    whatever the commits' metadata, timestamps or parents."""
    checksum = OSTree.commit_get_content_checksum(_load_commit(repo, commit))
    if checksum is None:
        raise BootcError(f"Commit {commit} has no root tree")
    return str(checksum)


def prune_marker(repo: OSTree.Repo) -> Path:
    """Where a sysroot's cleanup marks a prune it has begun and not finished (beside the
    repo, in bootc's own directory). While it is there, an object that no ref reaches
    may have lost objects it names: a prune deletes in directory order."""
    # Through "..", not Path.parent: a sysroot's repo is named by its fd
    # (/proc/self/fd/N), whose parent only the kernel knows.
    return Path(repo.get_path().get_path(), "../bootc/prune-pending")


def checkout(repo: OSTree.Repo, commit: str, dest: Path) -> None:
    """Check `commit` out at `dest` (which must not exist), as hardlinks into the repo
    where it can: the files are the repo's objects and must never be changed in place."""
    # The defaults are what is wanted: mode NONE keeps owners (we are root),
    # overwrite NONE refuses an existing `dest`.
    options = OSTree.RepoCheckoutAtOptions()
    with libostree_errors(f"Checking out {commit}"):
        repo.checkout_at(options, -100, str(dest), commit, None)  # -100: AT_FDCWD
