"""What the tests of layer commits on random layer stacks share: a bare repo of their
own, each stack imported into it as the ostree backend imports an image, and a checkout
compared with the kernel's view of the stack."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, settings

from pybootc.layers.listing import diff_listings, list_tree
from pybootc.oci.imgref import ImageReference, OstreeImageReference, SignatureSource
from pybootc.oci.metadata import fetch_image_metadata
from pybootc.ostree.gi import OSTree
from pybootc.sample.ocibuild import Layer
from pybootc.stores.layered import LayeredImage
from pybootc.stores.ostree import import_layers
from tests.object_support import new_bare_repo
from tests.support import Oracle, Tree


@contextmanager
def bare_repo(prefix: str) -> Iterator[tuple[OSTree.Repo, Path]]:
    """A new bare repo (no sysroot: nothing is deployed from it), and a work directory."""
    where = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    created = new_bare_repo(where / "repo")
    (where / "work").mkdir()
    try:
        yield created, where / "work"
    finally:
        shutil.rmtree(where)


@contextmanager
def imported_stack(
    oracle: Oracle, repo: OSTree.Repo, work: Path, stack: Sequence[Layer]
) -> Iterator[tuple[Tree, LayeredImage, Path] | None]:
    """The kernel's view of `stack`, its layers imported into `repo`, and a scratch
    directory for the block; None if containers-storage refuses the stack (the blobs
    source's refusal is tested elsewhere)."""
    tag = oracle.add(stack)
    kernel = oracle.kernel_view(tag)
    if isinstance(kernel, str):
        yield None
        return
    imgref = OstreeImageReference(
        SignatureSource.insecure(), ImageReference.parse(oracle.layout.ref(tag))
    )
    scratch = Path(tempfile.mkdtemp(dir=work))
    try:
        imported = import_layers(repo, imgref, fetch_image_metadata(imgref.imgref), scratch)
        yield kernel, imported, scratch
    finally:
        shutil.rmtree(scratch)


def assert_kernel_view(kernel: Tree, root: Path) -> None:
    """The tree at `root` is the kernel's view. OSTree keeps no hardlink identity
    (identical files share one object), so hardlink groups are left out."""
    ours = [dataclasses.replace(e, link_group=None) for e in list_tree(root)]
    want = [dataclasses.replace(e, link_group=None) for e in kernel]
    assert not diff_listings(want, ours), "\n".join(diff_listings(want, ours))


def stack_settings(max_examples: int) -> settings:
    """Hypothesis settings for stacks checked against the kernel: the same examples on
    every run, and no deadline (an example pulls, mounts and imports an image)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
