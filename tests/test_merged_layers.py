"""Merges kept for the next import (ostree/merged_image.py): an import that starts from
the kept merge of its lowest layers makes the tree a merge of every layer makes, on
random layer stacks against the kernel, and through the CLI against a fresh install;
and a kept merge goes when its layers do. And the lines that seed /var, taken from the
image before where its /var and its tmpfiles.d declarations are the same
(ostree/tree_postprocess.py): only then, and to the same tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootc.layers.tree import Dir, FileMeta, Leaf, LeafKind
from pybootc.ostree import merged_image
from pybootc.ostree.ext_format import blob_ref
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.layer_commit import (
    ROOT_META,
    TREE_FORMAT,
    TREE_FORMAT_KEY,
    LayerInfo,
    write_layer_commit,
)
from pybootc.ostree.merged_image import (
    MERGED_REF_PREFIX,
    keep_merges,
    merge_image,
    prune_merged_refs,
)
from pybootc.ostree.objects import ObjectWriter
from pybootc.ostree.repo import (
    list_refs,
    read_commit_metadata,
    resolve_ref,
    root_tree_checksum,
    set_ref,
    transaction,
)
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import (
    ImageSpec,
    Layer,
    OciLayout,
    directory,
    file,
    layer,
    opaque,
    whiteout,
)
from pybootc.stores.commit import ostree_seeds_var
from tests.backend_support import bootc, install, layout_layer_digests, ok
from tests.layer_stack_support import (
    assert_kernel_view,
    bare_repo,
    imported_stack,
    stack_settings,
)
from tests.object_support import new_bare_repo
from tests.strategies import layers
from tests.support import Oracle


@pytest.fixture(scope="module")
def repo() -> Iterator[tuple[OSTree.Repo, Path]]:
    with bare_repo("pybootc-merged-repo-") as found:
        yield found


def _keep_merges_of(repo: OSTree.Repo, layer_commits: list[str]) -> None:
    """What an import of an image of these layers keeps."""
    writer = ObjectWriter(repo)
    with transaction(repo, "Keeping merges") as commits:
        kept = keep_merges(repo, writer, merge_image(repo, writer, layer_commits))
        commits.extend(checksum for _, checksum in kept)
    for ref, checksum in kept:
        set_ref(repo, ref, checksum)


@pytest.mark.oracle
@stack_settings(60)
@given(stack=st.lists(layers(), min_size=3, max_size=6), data=st.data())
def test_a_merge_from_a_kept_one_is_the_kernel_view(
    oracle: Oracle, repo: tuple[OSTree.Repo, Path], stack: list[Layer], data: st.DataObject
) -> None:
    ostree_repo = repo[0]
    with imported_stack(oracle, *repo, stack) as imported:
        if imported is None:
            return
        kernel, image, scratch = imported
        # An image imported before had the lowest `below` layers and maybe one more
        # (kept: its merge, and the merge of all but its top layer).
        below = data.draw(st.integers(2, len(stack) - 1), label="layers shared")
        _keep_merges_of(ostree_repo, list(image.layers[: below + data.draw(st.booleans())]))
        writer = ObjectWriter(ostree_repo)
        with transaction(ostree_repo, "Merging"):
            reused = merge_image(ostree_repo, writer, list(image.layers)).reused
        assert reused >= below
        image.flatten(scratch / "root")
        assert_kernel_view(kernel, scratch / "root")


# Over the sample image: files, a directory the update makes opaque, and one whose file
# the update whites out; all below the layer the update changes.
_BASE = (
    layer(
        directory("usr/share/app"),
        file("usr/share/app/kept", "kept\n"),
        file("usr/share/app/hidden", "hidden\n"),
        directory("usr/share/cleared"),
        file("usr/share/cleared/old", "old\n"),
        file("etc/app.conf", "a=1\n"),
    ),
)
_TOP = layer(
    whiteout("usr/share/app/hidden"),
    opaque("usr/share/cleared"),
    file("usr/share/cleared/new", "new\n"),
    file("etc/app.conf", "a=2\n"),
    file("var/lib/app/state", "s\n"),
)
# The update adds _TOP over the image before, or puts it in place of that image's top
# layer (the sample's version layer, below _BASE: a new version changes it).
UPDATES = {
    "a layer added on top": (
        sample_image("1", extra=_BASE),
        sample_image("1", extra=(*_BASE, _TOP)),
    ),
    "the top layer replaced": (
        sample_image("1", extra=(*_BASE, layer(file("usr/share/app/top", "1\n")))),
        sample_image("1", extra=(*_BASE, _TOP)),
    ),
}


def _image_tree(sysroot: Path) -> str:
    repo = Sysroot.open(sysroot).repo
    (commit,) = list_refs(repo, "ostree/container/image").values()
    return root_tree_checksum(repo, commit)


def _update_against_a_fresh_install(
    tmp_path: Path, sysroots: tuple[Path, Path], backend: str, before: ImageSpec, after: ImageSpec
) -> str:
    """Install `before` in the first sysroot and upgrade it to `after`, install `after`
    in the second (with no kept merge to start from), and check that both committed
    the same tree; the upgrade's debug log."""
    updated, fresh = sysroots
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", before)
    ok(install(updated, layout.ref("os"), backend=backend))
    layout.add_image("os", after)
    proc = bootc("--debug", "upgrade", "--quiet", sysroot=updated)
    ok(proc)
    ok(install(fresh, layout.ref("os"), backend=backend))
    assert _image_tree(updated) == _image_tree(fresh)
    return proc.stderr


def _deployed_file(sysroot: Path, path: str) -> str:
    return (Sysroot.open(sysroot).deployments()[0].deployment_path / path).read_text()


@pytest.mark.parametrize("backend", ["ostree", "container"])
@pytest.mark.parametrize("update", UPDATES)
def test_an_update_from_a_kept_merge_makes_the_tree_of_a_fresh_install(
    tmp_path: Path, target: Path, other_target: Path, backend: str, update: str
) -> None:
    before, after = UPDATES[update]
    log = _update_against_a_fresh_install(tmp_path, (target, other_target), backend, before, after)
    assert f"over the kept merge of the lowest {len(after.layers) - 1}" in log


def test_kept_merges_go_with_their_layers(tmp_path: Path, target: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    kept: list[set[str]] = []
    for n in range(3):
        # A lowest layer of its own: no merge of one image's layers is another's. Each
        # update moves the oldest image out of the deployments (the one before stays
        # as rollback), and with it the layer only that image has.
        image = sample_image(str(n))
        layout.add_image(
            "os", dataclasses.replace(image, layers=(layer(file("n", str(n))), *image.layers))
        )
        if n == 0:
            ok(install(target, layout.ref("os"), backend="ostree"))
        else:
            ok(bootc("upgrade", sysroot=target))
        merges = set(list_refs(Sysroot.open(target).repo, MERGED_REF_PREFIX))
        kept.append(merges - set().union(*kept))
        # The merge of all its layers and of all but the top one.
        assert len(kept[-1]) == 2
    repo = Sysroot.open(target).repo
    assert set(list_refs(repo, MERGED_REF_PREFIX)) == kept[1] | kept[2]
    assert all(resolve_ref(repo, ref) is None for ref in kept[0])


# A /var to seed (by tmpfiles.d lines where libostree is older than 2024.3).
_VAR = layer(
    directory("var/lib/app", mode=0o750),
    file("var/lib/app/db", "x", mode=0o600),
    directory("var/cache/app"),
)
VAR_UPDATES = {
    # /var as it was: its lines are the image before's.
    "the same /var": (layer(file("usr/share/app/more", "more\n")), True),
    # The same /var, but a tmpfiles.d line of the image's own declares a path of it,
    # which the seed lines then leave out.
    "a path of /var declared": (
        layer(file("usr/lib/tmpfiles.d/app.conf", "d /var/lib/app 0750 root root -\n")),
        False,
    ),
}


@pytest.mark.parametrize("backend", ["ostree", "container"])
@pytest.mark.parametrize("update", VAR_UPDATES)
def test_an_update_reuses_the_var_seed_of_the_same_var_only(
    tmp_path: Path, target: Path, other_target: Path, backend: str, update: str
) -> None:
    top, reused = VAR_UPDATES[update]
    before, after = sample_image("1", extra=(_VAR,)), sample_image("1", extra=(_VAR, top))
    log = _update_against_a_fresh_install(tmp_path, (target, other_target), backend, before, after)
    seed = "usr/lib/tmpfiles.d/pybootc-var.conf"
    if ostree_seeds_var():
        # libostree 2024.3 and later seed the stateroot's /var from the commit's own:
        # the commit keeps /var, and there are no lines to make or reuse.
        deployed = Sysroot.open(target).deployments()[0].deployment_path
        assert "Seeding /var" not in log
        assert not (deployed / seed).exists()
        assert (deployed / "var/lib/app/db").read_text() == "x"
    else:
        assert ("Seeding /var as image commit" in log) == reused
        assert "/var/lib/app/db" in _deployed_file(target, seed)
        assert ("d /var/lib/app " in _deployed_file(target, seed)) == reused


def _layer_commit(repo: OSTree.Repo, digest: str) -> str:
    found = resolve_ref(repo, blob_ref(digest))
    assert found is not None
    return found


def _as_older_rules_made_it(repo: OSTree.Repo, digest: str, tree_of: str) -> None:
    """Point the commit of layer `digest` at one an older pybootc could have left:
    another tree (the commit `tree_of`'s), and no tree format recorded."""
    _, variant, _ = repo.load_commit(_layer_commit(repo, digest))
    metadata = GLib.VariantDict.new(variant.get_child_value(0))
    metadata.remove(TREE_FORMAT_KEY)
    _, root, _ = repo.read_commit(tree_of, None)
    with transaction(repo, "An older layer commit") as commits:
        _, older = repo.write_commit_with_time(None, "older", None, metadata.end(), root, 0, None)
        commits.append(older)
    set_ref(repo, blob_ref(digest), older)


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_layer_commits_of_other_rules_are_read_again(
    tmp_path: Path, target: Path, other_target: Path, backend: str
) -> None:
    # The repo outlives the pybootc that wrote it: an update brings a new one.
    before, after = UPDATES["a layer added on top"]
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", before)
    ok(install(target, layout.ref("os"), backend=backend))
    repo = Sysroot.open(target).repo
    digests = layout_layer_digests(layout, "os")
    _as_older_rules_made_it(repo, digests[-1], _layer_commit(repo, digests[0]))
    layout.add_image("os", after)
    ok(bootc("upgrade", "--quiet", sysroot=target))
    ok(install(other_target, layout.ref("os"), backend=backend))
    assert _image_tree(target) == _image_tree(other_target)
    repo = Sysroot.open(target).repo
    metadata = read_commit_metadata(repo, _layer_commit(repo, digests[-1]))
    assert metadata[TREE_FORMAT_KEY] == TREE_FORMAT


def test_kept_merges_of_other_rules_are_neither_taken_nor_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A repo of its own: the module's shared one holds the random stacks' merges.
    ostree_repo = new_bare_repo(tmp_path / "repo")
    writer = ObjectWriter(ostree_repo)
    layer_commits = []
    with transaction(ostree_repo, "Layers") as commits:
        for n in range(3):
            content = writer.regular_from_bytes(FileMeta(0, 0, 0o100644), b"x")
            tree = Dir(writer.dirmeta(ROOT_META), {f"f{n}": Leaf(LeafKind.REGULAR, content)})
            info = LayerInfo(f"sha256:{n:064x}", frozenset())
            layer_commits.append(write_layer_commit(ostree_repo, writer, tree, info))
        commits.extend(layer_commits)
    for n, commit in enumerate(layer_commits):
        set_ref(ostree_repo, blob_ref(f"sha256:{n:064x}"), commit)
    monkeypatch.setattr(merged_image, "TREE_FORMAT", TREE_FORMAT + 1)
    _keep_merges_of(ostree_repo, layer_commits)
    monkeypatch.undo()
    older = set(list_refs(ostree_repo, MERGED_REF_PREFIX))
    assert len(older) == 2
    with transaction(ostree_repo, "Merging"):
        assert merge_image(ostree_repo, writer, layer_commits).reused == 0
    assert set(prune_merged_refs(ostree_repo)) == older
