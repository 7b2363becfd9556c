"""The `container` backend: pull into bootc's storage, flatten, post-process, commit.

The image goes into SYSROOT/ostree/bootc/storage with `skopeo copy`, so
containers-storage brings zstd:chunked and encrypted layers; its overlay diff
directories are merged, post-processed like ostree-ext and committed to the
sysroot's repo with the metadata ostree-ext writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pybootc import bootc_storage
from pybootc.backends.image_commit import finish_import, import_workdir
from pybootc.errors import error_context
from pybootc.image_metadata import ImageMetadata, metadata_at
from pybootc.imgref import OstreeImageReference
from pybootc.layers.flatten import flatten_diff_dirs
from pybootc.oci.model import Descriptor
from pybootc.ostree_gi import OSTree
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.registry_auth import ANONYMOUS, RegistryAuth


def missing_layers(sysroot_path: Path, metadata: ImageMetadata) -> list[Descriptor]:
    """The image's layers bootc's storage has not unpacked: what a pull fetches."""
    stored = bootc_storage.bootc_storage(sysroot_path).stored_blob_digests()
    return [d for d in metadata.manifest.layers if d.digest not in stored]


@dataclass(frozen=True)
class ImportedImage:
    commit: str
    metadata: ImageMetadata
    stored_name: str


def import_image(
    sysroot_path: Path,
    repo: OSTree.Repo,
    imgref: OstreeImageReference,
    *,
    source: ImageMetadata | None = None,
    decryption_key: Path | None = None,
    auth: RegistryAuth = ANONYMOUS,
    disable_selinux: bool = False,
    progress: Progress = NO_PROGRESS,
) -> ImportedImage:
    """Pull `imgref` into bootc's storage and commit its post-processed tree.

    `source` is the manifest and config fetched before the pull; the commit records
    that manifest, as the source serves it, unless the tag moved to another image since.
    """
    storage = bootc_storage.bootc_storage(sysroot_path)
    with import_workdir(sysroot_path, imgref) as work:
        with progress.step("pulling"):
            # skopeo applies the signature policy again to what it pulls. It stages
            # blobs in the work directory: what a killed pull left there goes with it,
            # or with the next import's sweep, never into the host's /var/tmp.
            staging = work / "skopeo"
            staging.mkdir()
            name = bootc_storage.pull(
                storage, imgref.imgref, decryption_key=decryption_key, auth=auth, tmpdir=staging
            )
        stored = metadata_at(storage.reference(name))
        # A decrypting pull stores a rewritten manifest, whose digest the registry never
        # serves: recorded, it would make every upgrade and switch see a new image. (The
        # storage itself knows the image by the source's digest too: podman's Digest.)
        metadata = stored
        if source is not None and source.config_digest == stored.config_digest:
            metadata = source
        root = work / "root"
        with error_context(f"Importing {imgref}"), progress.step("flattening"):
            flatten_diff_dirs(storage.layer_diff_dirs(name), root)
        commit = finish_import(
            repo, root, imgref, metadata, disable_selinux=disable_selinux, progress=progress
        )
    return ImportedImage(commit, metadata, name)
