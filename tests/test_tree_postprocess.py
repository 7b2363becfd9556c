"""Post-processing in memory (ostree/tree_postprocess.py) against post-processing a
checkout (layers/postprocess.py), on the same layer commits: the same tree, the same
warnings, or the same error; and the images only a checkout does exactly are sent there.
The tree includes the SELinux labels, where the image has a policy: in memory they are
given by selinux_labels.py, on a checkout by libostree's commit.

Both ways run on both settings of ostree's /var seeding (`keep_var`), so the tmpfiles.d
lines that seed /var on older ostree are compared too.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc import tools
from pybootc.errors import BootcError
from pybootc.layers.postprocess import postprocess_tree
from pybootc.oci.imgref import ImageReference, OstreeImageReference, SignatureSource
from pybootc.oci.metadata import fetch_image_metadata
from pybootc.ostree.ext_format import image_ref_name
from pybootc.ostree.gi import OSTree
from pybootc.ostree.repo import (
    CommitInfo,
    commit_directory,
    prune_marker,
    root_tree_checksum,
    set_ref,
)
from pybootc.ostree.tree_postprocess import NeedsCheckout
from pybootc.ostree.xattrs import xattrs_of
from pybootc.sample.image import KERNEL_VERSION, sample_image
from pybootc.sample.ocibuild import (
    Entry,
    Kind,
    Layer,
    OciLayout,
    directory,
    file,
    layer,
    symlink,
    whiteout,
)
from pybootc.stores.layered import LayeredImage
from pybootc.stores.ostree import import_layers
from tests.object_support import new_bare_repo
from tests.selinux_support import file_contexts, policy_layer, policy_type

_INFO = CommitInfo("test", {}, 0)
_MODULES = f"usr/lib/modules/{KERNEL_VERSION}"


def _fifo(name: str) -> Entry:
    return Entry(name, Kind.FIFO, mode=0o644)


def _char(name: str) -> Entry:
    return Entry(name, Kind.CHAR, devmajor=4, devminor=64, mode=0o620, gid=5)


_CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
# Files whose xattrs the labels must keep, replace or leave in their order.
_XATTR_ENTRIES = (
    Entry("usr/bin/capable", Kind.FILE, b"c", 0o755, xattrs={"security.capability": _CAPABILITY}),
    Entry("usr/share/noted", Kind.FILE, b"n", 0o644, xattrs={"user.note": b"kept"}),
    Entry(
        "usr/share/both",
        Kind.FILE,
        b"b",
        0o644,
        xattrs={"user.a": b"1", "security.capability": _CAPABILITY},
    ),
    Entry(
        "usr/share/mislabelled",
        Kind.FILE,
        b"m",
        0o644,
        xattrs={"security.selinux": b"system_u:object_r:tmp_t:s0\0"},
    ),
    Entry("usr/share/labelled-dir", Kind.DIR, mode=0o750, xattrs={"user.dir": b"d"}),
    file("usr/share/labelled-dir/empty", ""),
    Entry("usr/share/labelled-dir/same", Kind.HARDLINK, linkname="usr/share/noted"),
    symlink("usr/share/labelled-dir/link", "../noted"),
    file("etc/app.conf", "x=1\n"),
    directory("var/lib/labelled"),
)

# Layers on top of the sample image.
CASES: dict[str, tuple[Layer, ...]] = {
    "the sample image": (),
    "a /var to seed, some of it declared by the image": (
        layer(
            directory("var/lib/app", mode=0o750, uid=101, gid=102),
            file("var/lib/app/db", "x", mode=0o600, uid=101),
            symlink("var/lib/app/current", "db"),
            directory("var/cache/deep/er", mode=0o700),
            directory("var/log"),
            file("usr/lib/tmpfiles.d/app.conf", "d /var/log 0755 root root -\n# d /var/x\n"),
            file("etc/tmpfiles.d/local.conf", "L /var/lib/app/current - - - - db\n"),
            file("etc/tmpfiles.d/.hidden.conf", "d /var/cache/deep 0700 - - -\n"),
            file("etc/tmpfiles.d/notes.txt", "d /var/lib/app 0750 - - -\n"),
            directory("usr/lib/tmpfiles.d/dir.conf"),
        ),
    ),
    "an image's own pybootc-var.conf is replaced": (
        layer(file("usr/lib/tmpfiles.d/pybootc-var.conf", "d /var/lib/sample 0700 - - -\n")),
    ),
    "special files, in API directories and elsewhere": (
        layer(
            _fifo("run/initctl"),
            _char("dev/tty0"),
            _char("usr/share/dev-node"),
            _fifo("etc/fifo"),
            _fifo("var/spool/fifo"),
            directory("usr/share/ok"),
        ),
    ),
    "a special file a higher layer replaced": (
        layer(_char("usr/share/node")),
        layer(file("usr/share/node", "a file now")),
    ),
    "API directories with content": (
        layer(
            file("proc/x", "x"),
            directory("sys/y"),
            file("sys/y/z", "z"),
            file("run/lock/stale", "s"),
        ),
    ),
    "a /sysroot with content, and the right /ostree link": (
        layer(directory("sysroot/ostree/repo"), symlink("ostree", "sysroot/ostree/")),
    ),
    "an /ostree link elsewhere": (layer(symlink("ostree", "sysroot/elsewhere")),),
    "an /ostree directory": (layer(directory("ostree")),),
    "an /ostree file": (layer(file("ostree", "x")),),
    "a /sysroot file": (layer(file("sysroot", "x")),),
    "both /etc and /usr/etc": (layer(directory("usr/etc")),),
    "/etc a symlink": (layer(Entry("etc", Kind.SYMLINK, linkname="usr/etc")),),
    "/usr/share a file where /var must go": (layer(file("usr/share", "x")),),
    "two kernels": (layer(file("usr/lib/modules/7.0.0/vmlinuz", "k")),),
    "a kernel that is a symlink": (
        layer(Entry(f"{_MODULES}/vmlinuz", Kind.SYMLINK, linkname="/boot/vmlinuz")),
    ),
    "a kernel that is a special file": (layer(_char(f"{_MODULES}/vmlinuz")),),
    "no os-release ID": (layer(file("usr/lib/os-release", "NAME=x\n")),),
    "os-release only in /etc": (
        layer(
            file("usr/lib/os-release", "NAME=x\n"),
            Entry("etc/os-release", Kind.FILE, data=b"ID=etc\n", mode=0o644),
        ),
    ),
    "injected files, empty and not": (
        layer(file("etc/hostname", ""), file("etc/resolv.conf", "nameserver 1.1.1.1\n")),
    ),
    "an injected file that is a symlink": (layer(symlink("etc/hostname", "/run/hostname")),),
    "an SELinux config that names no policy": (
        layer(file("etc/selinux/config", "SELINUX=enforcing\n")),
    ),
    "the host's SELinux policy": (policy_layer(), layer(*_XATTR_ENTRIES)),
    "the host's SELinux policy, disabled": (
        policy_layer(),
        layer(file("etc/selinux/config", f"SELINUX=disabled\nSELINUXTYPE={policy_type()}\n")),
    ),
}
# What only a checkout post-processes exactly.
NEEDS_CHECKOUT: dict[str, tuple[Layer, ...]] = {
    "an SELinux config that is a symlink": (
        policy_layer(),
        layer(symlink("etc/selinux/config", "config.d/real")),
    ),
    "a tmpfiles.d file that is a symlink": (
        layer(symlink("usr/lib/tmpfiles.d/masked.conf", "/dev/null")),
    ),
    "/usr/lib a symlink": (
        layer(Entry("usr/lib", Kind.SYMLINK, linkname="/usr/lib64"), directory("usr/lib64")),
    ),
}


# An image with a policy, and its updates: files added (one the same object as a file
# before, at a path labelled otherwise), one changed, one with other xattrs; then one
# more file, deep in a directory the update before took over; and the policy's own file
# contexts changed (for paths nothing else changes).
_LABELLED_BEFORE = (
    policy_layer(),
    layer(*_XATTR_ENTRIES),
    layer(
        file("usr/share/deep/a/x", "x"),
        file("usr/share/deep/b/y", "y"),
        # The same tree at two paths the policy labels otherwise.
        file("usr/share/twin/t", "t"),
        file("usr/lib/twin/t", "t"),
    ),
)
_LABELLED_UPDATE = layer(
    file("usr/bin/added", "a", mode=0o755),
    file("usr/bin/empty-too", ""),
    file("usr/share/noted", "changed"),
    Entry("usr/share/both", Kind.FILE, b"b", 0o644, xattrs={"user.a": b"2"}),
)
_LABELLED_UPDATES = {
    "labelled-before": _LABELLED_BEFORE,
    "labelled-after": (*_LABELLED_BEFORE, _LABELLED_UPDATE),
    "labelled-after-2": (
        *_LABELLED_BEFORE,
        _LABELLED_UPDATE,
        layer(file("usr/share/deep/a/z", "z")),
    ),
    # A file only the first image has, gone in the second, back in the third.
    "labelled-with-gone": (*_LABELLED_BEFORE, layer(file("usr/share/gone", "g"))),
    "labelled-without-gone": (
        *_LABELLED_BEFORE,
        layer(file("usr/share/gone", "g")),
        layer(whiteout("usr/share/gone")),
    ),
    "labelled-with-gone-again": (*_LABELLED_BEFORE, layer(file("usr/share/gone", "g"))),
    # More lookups than make a second thread worth it, most of them (in the order the
    # labeller asks) before /usr/bin/sh, a symlink whose label is not a file's.
    "labelled-many": (
        policy_layer(),
        layer(
            *(file(f"etc/many/{index // 50}/conf{index}", str(index)) for index in range(600)),
            symlink("usr/bin/sh", "dash"),
        ),
        layer(file("usr/bin/dash", "#!", mode=0o755)),
    ),
    "labelled-other-policy": (
        *_LABELLED_BEFORE,
        layer(
            file(
                str(file_contexts().relative_to("/")),
                file_contexts().read_text()
                + "/usr/lib/modules(/.*)?\tsystem_u:object_r:bin_t:s0\n",
            )
        ),
    ),
}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    found = OciLayout(tmp_path_factory.mktemp("tree-postprocess") / "oci")
    for index, extra in enumerate([*CASES.values(), *NEEDS_CHECKOUT.values()]):
        found.add_image(f"case{index}", sample_image("1.0", extra=extra))
    for tag, extra in _LABELLED_UPDATES.items():
        found.add_image(tag, sample_image("1.0", extra=extra))
    return found


@pytest.fixture
def repo(target: Path) -> Iterator[tuple[OSTree.Repo, Path]]:
    created = new_bare_repo(target / "repo")
    (target / "repo/tmp/work").mkdir()
    try:
        yield created, target / "repo/tmp/work"
    finally:
        shutil.rmtree(target / "repo")


def _layered(repo: OSTree.Repo, work: Path, layout: OciLayout, tag: str) -> LayeredImage:
    imgref = OstreeImageReference(SignatureSource.insecure(), ImageReference.parse(layout.ref(tag)))
    metadata = fetch_image_metadata(imgref.imgref)
    return import_layers(repo, imgref, metadata, work)


def _in_memory(image: LayeredImage, keep_var: bool) -> tuple[str, frozenset[str]] | str:
    """The tree and the warnings, or the error."""
    try:
        commit, result = image.commit_in_memory(_INFO, keep_var=keep_var, label=True)
    except BootcError as err:
        return err.message
    return root_tree_checksum(image.repo, commit), frozenset(result.warnings)


def _on_a_checkout(
    image: LayeredImage, work: Path, keep_var: bool
) -> tuple[str, frozenset[str]] | str:
    scratch = Path(tempfile.mkdtemp(dir=work))
    try:
        devino = image.flatten(scratch / "root")
        result = postprocess_tree(scratch / "root", keep_var=keep_var)
        # As stores/commit.py's finish_import labels a checkout.
        labelled = (scratch / "root/usr/etc/selinux/config").is_file()
        commit = commit_directory(
            image.repo,
            scratch / "root",
            info=_INFO,
            selinux_policy=scratch / "root" if labelled else None,
            devino=devino,
        )
    except BootcError as err:
        return err.message
    finally:
        shutil.rmtree(scratch)
    return root_tree_checksum(image.repo, commit), frozenset(result.warnings)


@pytest.mark.parametrize("keep_var", [False, True], ids=["var-seeded", "var-kept"])
@pytest.mark.parametrize("case", list(CASES))
def test_in_memory_and_on_a_checkout_make_the_same_tree(
    repo: tuple[OSTree.Repo, Path], layout: OciLayout, case: str, keep_var: bool
) -> None:
    ostree_repo, work = repo
    image = _layered(ostree_repo, work, layout, f"case{list(CASES).index(case)}")
    assert _in_memory(image, keep_var) == _on_a_checkout(image, work, keep_var)


@pytest.mark.parametrize("way", ["in memory", "on a checkout"])
def test_labelled_objects_pass_ostree_fsck(
    repo: tuple[OSTree.Repo, Path], layout: OciLayout, way: str
) -> None:
    """Files whose other xattrs sort after security.selinux (user.*) keep their xattrs
    sorted with the label among them, as libostree reads them back: libostree 2022.7's
    own commit with a policy appends the label, and its fsck then calls the object
    corrupt (ostree#3343)."""
    ostree_repo, work = repo
    case = "the host's SELinux policy"
    image = _layered(ostree_repo, work, layout, f"case{list(CASES).index(case)}")
    made = _in_memory(image, False) if way == "in memory" else _on_a_checkout(image, work, False)
    assert not isinstance(made, str), made

    fsck = tools.run(["ostree", "fsck", f"--repo={ostree_repo.get_path().get_path()}"], check=False)

    assert fsck.returncode == 0, fsck.stderr.decode()


def test_the_cases_cover_both_outcomes(repo: tuple[OSTree.Repo, Path], layout: OciLayout) -> None:
    """Some cases deploy with warnings, some are refused: neither way is compared on
    one outcome only."""
    ostree_repo, work = repo
    outcomes = [
        _in_memory(_layered(ostree_repo, work, layout, f"case{index}"), False)
        for index in range(len(CASES))
    ]
    assert any(isinstance(o, str) for o in outcomes)
    assert any(not isinstance(o, str) and o[1] for o in outcomes)


@pytest.mark.parametrize("case", list(NEEDS_CHECKOUT))
def test_what_only_a_checkout_does_exactly_is_sent_there(
    repo: tuple[OSTree.Repo, Path], layout: OciLayout, case: str
) -> None:
    ostree_repo, work = repo
    index = len(CASES) + list(NEEDS_CHECKOUT).index(case)
    image = _layered(ostree_repo, work, layout, f"case{index}")
    with pytest.raises(NeedsCheckout):
        image.commit_in_memory(_INFO, keep_var=False, label=True)


def _labelled_in_memory(
    image: LayeredImage, caplog: pytest.LogCaptureFixture
) -> tuple[str, tuple[str, frozenset[str]], tuple[int, int, int]]:
    """The commit made in memory, its tree and warnings (as _in_memory), and how many
    files its labels wrote anew, how many directories they took over labelled, and how
    many labels the lookahead's thread gave."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pybootc.ostree.selinux_labels"):
        commit, result = image.commit_in_memory(_INFO, keep_var=False, label=True)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Labelled")]
    match = re.fullmatch(
        r"Labelled \d+ files, (\d+) of them anew; took (\d+) directories over labelled; "
        r"(\d+) labels looked up ahead",
        line,
    )
    assert match is not None, line
    tree = (root_tree_checksum(image.repo, commit), frozenset(result.warnings))
    return commit, tree, (int(match[1]), int(match[2]), int(match[3]))


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        # The four files of the update; the rest, the /var seed lines too, taken over.
        (["labelled-after"], (4, True)),
        # One file, where the image before took most of its labels over itself: with
        # the first image gone, what it labelled is known through the second.
        (["labelled-after", "labelled-after-2"], (1, True)),
        # Another policy: no directory is taken over. Files are, where their label is
        # the same: new are the file contexts, and the kernel and initramfs below
        # /usr/lib/modules, which it labels otherwise.
        (["labelled-other-policy"], (3, False)),
    ],
    ids=["an update", "two updates", "another policy"],
)
def test_an_update_labels_anew_only_what_it_changed(
    repo: tuple[OSTree.Repo, Path],
    layout: OciLayout,
    caplog: pytest.LogCaptureFixture,
    updates: list[str],
    expected: tuple[int, bool],
) -> None:
    """The files and directories the image before labelled are taken over from it, and
    the tree is still the one a checkout's commit labels."""
    ostree_repo, work = repo
    previous = None
    for tag in ["labelled-before", *updates]:
        image = _layered(ostree_repo, work, layout, tag)
        commit, in_memory, (written, taken_over, _) = _labelled_in_memory(image, caplog)
        assert in_memory == _on_a_checkout(image, work, False)
        # What an import does next: the image's ref, where the next one finds its labels;
        # and, as on a host with one image before, no ref for the image before that.
        set_ref(ostree_repo, image_ref_name(layout.ref(tag)), commit)
        if previous is not None:
            set_ref(ostree_repo, image_ref_name(layout.ref(previous)), None)
        previous = tag
    # Files labelled anew, and whether directories were taken over.
    assert (written, taken_over > 0) == expected


def test_a_large_tree_is_labelled_from_both_ends(
    repo: tuple[OSTree.Repo, Path], layout: OciLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """A second thread looks labels up from the end of the walk: the tree is still the
    one a checkout's commit labels, /usr/bin/sh a symlink's label included."""
    ostree_repo, work = repo
    image = _layered(ostree_repo, work, layout, "labelled-many")
    commit, in_memory, (_, _, ahead) = _labelled_in_memory(image, caplog)
    assert ahead > 0
    assert in_memory == _on_a_checkout(image, work, False)
    _, tree, _ = ostree_repo.read_commit(commit, None)
    sh = tree.resolve_relative_path("usr/bin/sh")
    _, xattrs = sh.get_xattrs(None)
    assert b":bin_t:" in dict(xattrs_of(xattrs))["security.selinux"]


def test_what_was_labelled_is_taken_over_only_while_the_repo_has_it(
    repo: tuple[OSTree.Repo, Path], layout: OciLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """A labelled file the image that made it took with it, when it was pruned, is
    labelled anew: the image after it still lists it, and the repo no longer has it."""
    ostree_repo, work = repo
    refs = []
    for tag in ("labelled-with-gone", "labelled-without-gone"):
        image = _layered(ostree_repo, work, layout, tag)
        commit, _, _ = _labelled_in_memory(image, caplog)
        refs.append(image_ref_name(layout.ref(tag)))
        set_ref(ostree_repo, refs[-1], commit)
    set_ref(ostree_repo, refs[0], None)
    # What GC does once the first image is not deployed any more.
    ostree_repo.prune(OSTree.RepoPruneFlags.REFS_ONLY, 0, None)
    image = _layered(ostree_repo, work, layout, "labelled-with-gone-again")
    commit, in_memory, (written, _, _) = _labelled_in_memory(image, caplog)
    assert written == 1
    assert in_memory == _on_a_checkout(image, work, False)
    _, tree, _ = ostree_repo.read_commit(commit, None)
    gone = tree.resolve_relative_path("usr/share/gone")
    gone.ensure_resolved()
    _, found = ostree_repo.has_object(OSTree.ObjectType.FILE, gone.get_checksum(), None)
    assert found, "the labelled file's object is in the repo"


def _labelled_gone(repo: OSTree.Repo, commit: str) -> str:
    _, tree, _ = repo.read_commit(commit, None)
    gone = tree.resolve_relative_path("usr/share/gone")
    gone.ensure_resolved()
    return str(gone.get_checksum())


def test_no_directory_is_taken_over_while_a_prune_is_owed(
    repo: tuple[OSTree.Repo, Path], layout: OciLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """A prune that a kill interrupted can leave an image's labelled directory in the
    repo without a file it names. Until the next cleanup finishes the prune, nothing
    is taken over whole, and the image that has that directory again gets the file."""
    ostree_repo, work = repo
    refs, commits = [], []
    for tag in ("labelled-with-gone", "labelled-without-gone"):
        image = _layered(ostree_repo, work, layout, tag)
        commit, _, _ = _labelled_in_memory(image, caplog)
        refs.append(image_ref_name(layout.ref(tag)))
        commits.append(commit)
        set_ref(ostree_repo, refs[-1], commit)
    gone = _labelled_gone(ostree_repo, commits[0])
    # What a cleanup killed half-way through leaves once the first image is not
    # deployed: its commit deleted, the marker written, and the prune, deleting in
    # directory order, past the labelled file and not yet at the trees that name it.
    set_ref(ostree_repo, refs[0], None)
    ostree_repo.delete_object(OSTree.ObjectType.COMMIT, commits[0], None)
    ostree_repo.delete_object(OSTree.ObjectType.FILE, gone, None)
    marker = prune_marker(ostree_repo)
    marker.parent.mkdir(parents=True)
    marker.touch()

    image = _layered(ostree_repo, work, layout, "labelled-with-gone-again")
    commit, in_memory, (_, taken_over, _) = _labelled_in_memory(image, caplog)

    assert _labelled_gone(ostree_repo, commit) == gone
    _, found = ostree_repo.has_object(OSTree.ObjectType.FILE, gone, None)
    assert found, "the labelled file's object is in the repo again"
    assert taken_over == 0
    assert in_memory == _on_a_checkout(image, work, False)
