"""The last steps both backends share: post-process a flattened image and commit it.

Sharing them is what makes the two backends' commits of one image have the
same tree: same post-processing, same SELinux labelling, same metadata.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pybootc.errors import BootcError, error_context
from pybootc.layers.postprocess import PostprocessResult, postprocess_tree
from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.metadata import ImageMetadata
from pybootc.ostree.ext_format import image_commit_metadata, image_ref
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.repo import CommitInfo, commit_directory, set_ref
from pybootc.ostree.tree_postprocess import NeedsCheckout
from pybootc.progress import Progress
from pybootc.stores.layered import LayeredImage

log = logging.getLogger(__name__)


def ostree_seeds_var() -> bool:
    """ostree 2024.3 and newer copy an image's /var into an empty stateroot /var."""
    return bool(OSTree.check_version(2024, 3))


def _timestamp(created: str | None) -> int:
    if not created:
        return 0
    parsed = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    return int(parsed.timestamp())


IMPORT_PREFIX = "pybootc-import-"


@contextmanager
def import_workdir(sysroot_path: Path, imgref: OstreeImageReference) -> Iterator[Path]:
    """A scratch directory in the repo's filesystem (where a checkout can hardlink the
    repo's objects), removed afterwards; file system errors inside become one
    BootcError."""
    tmp = sysroot_path / "ostree/repo/tmp"
    # What an import that was killed left: imports run under the sysroot lock, so
    # none of these is in use now.
    for stale in tmp.glob(f"{IMPORT_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=IMPORT_PREFIX, dir=tmp))
    try:
        yield work
    except OSError as err:
        raise BootcError(f"Importing {imgref}: {err}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def image_commit(imgref: OstreeImageReference, metadata: ImageMetadata) -> CommitInfo:
    """What the image's commit records: ostree-ext's subject, metadata and timestamp."""
    variants = image_commit_metadata(metadata)
    if metadata.config.version:
        variants["version"] = GLib.Variant("s", metadata.config.version)
    return CommitInfo(
        subject=f"{imgref.imgref} ({metadata.manifest_digest})",
        metadata=variants,
        timestamp=_timestamp(metadata.config.created),
    )


def _warn(result: PostprocessResult) -> None:
    for warning in result.warnings:
        log.warning("%s", warning)


def finish_import(
    repo: OSTree.Repo,
    root: Path,
    imgref: OstreeImageReference,
    metadata: ImageMetadata,
    *,
    disable_selinux: bool,
    progress: Progress,
    devino: OSTree.RepoDevInoCache | None = None,
) -> str:
    """Post-process the flattened image at `root` (ostree-ext's rules; what a commit
    cannot hold is warned about), commit it with ostree-ext's metadata (`devino`, the
    cache of the checkout it was made from, names the objects its files already are),
    point the image's ref at it and return the commit."""
    with error_context(f"Importing {imgref}"):
        result = postprocess_tree(root, keep_var=ostree_seeds_var())
    _warn(result)
    with error_context(f"Importing {imgref}"), progress.step("committing") as counted:
        has_policy = (root / "usr/etc/selinux/config").is_file()
        commit = commit_directory(
            repo,
            root,
            info=image_commit(imgref, metadata),
            selinux_policy=root if has_policy and not disable_selinux else None,
            counted=counted,
            devino=devino,
        )
        set_ref(repo, image_ref(imgref.imgref), commit)
    return commit


def import_layers(
    image: LayeredImage,
    work: Path,
    imgref: OstreeImageReference,
    *,
    disable_selinux: bool,
    progress: Progress,
) -> str:
    """Merge, post-process and commit the image, point its ref at the commit and return
    it. In memory (ostree/tree_postprocess.py) where that is exact, which spares a
    checkout of the whole image; else on a checkout in `work` (`finish_import`)."""
    checkout: tuple[Path, OSTree.RepoDevInoCache] | None = None
    with error_context(f"Importing {imgref}"), progress.step("flattening") as counted:
        try:
            commit, result = image.commit_in_memory(
                image_commit(imgref, image.metadata),
                keep_var=ostree_seeds_var(),
                label=not disable_selinux,
                counted=counted,
            )
        except NeedsCheckout as why:
            log.debug("Post-processing %s on a checkout: %s", imgref, why)
            checkout = (work / "root", image.flatten(work / "root", counted))
    if checkout is not None:
        root, devino = checkout
        return finish_import(
            image.repo,
            root,
            imgref,
            image.metadata,
            disable_selinux=disable_selinux,
            progress=progress,
            devino=devino,
        )
    _warn(result)
    with progress.step("committing"):
        # Written with the merge already: what is left is the ref.
        set_ref(image.repo, image_ref(imgref.imgref), commit)
    return commit
