"""The ostree backend's path to a tree, on random layer stacks, against the kernel.

Each layer goes through what the backend does with it: its tar stream read into a
layer commit (whiteouts as `.wh.` files, devices and FIFOs as placeholders), the
layer commits merged in memory and the merged tree checked out. The result must be
the kernel's overlay view. OSTree keeps no hardlink identity (identical files share
one object), so hardlink groups are left out of the comparison.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootc.ostree.gi import OSTree
from pybootc.sample.ocibuild import Layer
from tests.layer_stack_support import (
    assert_kernel_view,
    bare_repo,
    imported_stack,
    stack_settings,
)
from tests.strategies import layers
from tests.support import Oracle

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def repo() -> Iterator[tuple[OSTree.Repo, Path]]:
    with bare_repo("pybootc-layer-repo-") as found:
        yield found


@stack_settings(100)
@given(stack=st.lists(layers(), min_size=3, max_size=6))
def test_layer_commits_merge_to_the_kernel_view(
    oracle: Oracle, repo: tuple[OSTree.Repo, Path], stack: list[Layer]
) -> None:
    with imported_stack(oracle, *repo, stack) as imported:
        if imported is None:
            return
        kernel, image, scratch = imported
        image.flatten(scratch / "root")
        assert_kernel_view(kernel, scratch / "root")
