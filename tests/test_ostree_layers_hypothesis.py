"""The ostree backend's path to a tree, on random layer stacks, against the kernel.

Each layer goes through what the backend does with it: its tar stream read into a
layer commit (whiteouts as `.wh.` files, devices and FIFOs as placeholders), the
layer commits merged in memory and the merged tree checked out. The result must be
the kernel's overlay view. OSTree keeps no hardlink identity (identical files share
one object), so hardlink groups are left out of the comparison.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybootc.layers.listing import diff_listings, list_tree
from pybootc.oci.imgref import ImageReference, OstreeImageReference, SignatureSource
from pybootc.oci.metadata import fetch_image_metadata
from pybootc.ostree.gi import Gio, OSTree
from pybootc.sample.ocibuild import Layer
from pybootc.stores.ostree import import_layers
from tests.strategies import layers
from tests.support import Oracle

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def repo() -> Iterator[tuple[OSTree.Repo, Path]]:
    where = Path(tempfile.mkdtemp(prefix="pybootc-layer-repo-", dir="/var/tmp"))
    created = OSTree.Repo.new(Gio.File.new_for_path(str(where / "repo")))
    created.create(OSTree.RepoMode.BARE, None)
    (where / "work").mkdir()
    try:
        yield created, where / "work"
    finally:
        shutil.rmtree(where)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(stack=st.lists(layers(), min_size=3, max_size=6))
def test_layer_commits_merge_to_the_kernel_view(
    oracle: Oracle, repo: tuple[OSTree.Repo, Path], stack: list[Layer]
) -> None:
    tag = oracle.add(stack)
    kernel = oracle.kernel_view(tag)
    if isinstance(kernel, str):
        return  # refused by containers-storage: the blobs source's refusal is tested elsewhere
    ostree_repo, work = repo
    imgref = OstreeImageReference(
        SignatureSource.insecure(), ImageReference.parse(oracle.layout.ref(tag))
    )
    scratch = Path(tempfile.mkdtemp(dir=work))
    try:
        metadata = fetch_image_metadata(imgref.imgref)
        imported = import_layers(ostree_repo, imgref, metadata, scratch)
        imported.flatten(scratch / "root")
        ours = [dataclasses.replace(e, link_group=None) for e in list_tree(scratch / "root")]
        want = [dataclasses.replace(e, link_group=None) for e in kernel]
        assert not diff_listings(want, ours), "\n".join(diff_listings(want, ours))
    finally:
        shutil.rmtree(scratch)
