"""Labels looked up ahead from the far end: the labeller gets the label libselinux gives
the path and type it asks for, whoever looked it up."""

from __future__ import annotations

import shutil
import stat

import pytest

from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.labels_ahead import LabelsAhead, lookup
from pybootc.ostree.repo import load_sepolicy
from tests.selinux_support import HOST_SELINUX, policy_files

# Paths the host's reference policy labels in many ways, some by type: /usr/bin/sh is
# shell_exec_t as a file and bin_t as a symlink, /tmp tmp_t only as a directory.
_PATHS = [
    *(f"/usr/bin/tool{index}" for index in range(150)),
    *(f"/usr/lib/x86_64-linux-gnu/lib{index}.so" for index in range(150)),
    *(f"/etc/conf{index}" for index in range(100)),
    "/usr/bin/sh",
    "/etc/shadow",
    "/tmp",
    "/var/lock",
]


@pytest.fixture(scope="module")
def sepolicy(tmp_path_factory: pytest.TempPathFactory) -> OSTree.SePolicy:
    root = tmp_path_factory.mktemp("policy")
    for path in policy_files():
        copy = root / "usr/etc/selinux" / path.relative_to(HOST_SELINUX)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    found = load_sepolicy(root)
    assert found is not None
    return found


def _planned(kind: int) -> list[tuple[str, int]]:
    return [(path, kind) for path in _PATHS]


def test_what_the_far_end_looked_up_is_taken_for_the_same_path_and_type(
    sepolicy: OSTree.SePolicy,
) -> None:
    planned = _planned(stat.S_IFREG)
    ahead = LabelsAhead(sepolicy, planned)
    # The far end's whole walk, before the labeller asks for anything.
    ahead._look_ahead()

    labels = [ahead.label(path, stat.S_IFREG | 0o644) for path, _ in planned]

    assert labels == [lookup(sepolicy, path, stat.S_IFREG) for path, _ in planned]
    assert ahead.taken == len(planned)
    assert "shell_exec_t" in str(labels[_PATHS.index("/usr/bin/sh")])


def test_an_entry_of_another_type_than_planned_is_looked_up_for_its_own(
    sepolicy: OSTree.SePolicy,
) -> None:
    """A symlink read back from a stored tree is planned as a regular file: the label
    looked up ahead for that is not its own."""
    planned = _planned(stat.S_IFREG)
    ahead = LabelsAhead(sepolicy, planned)
    ahead._look_ahead()

    labels = [
        ahead.label(path, (stat.S_IFLNK | 0o777) if path == "/usr/bin/sh" else stat.S_IFREG)
        for path, _ in planned
    ]

    sh = labels[_PATHS.index("/usr/bin/sh")]
    assert sh == lookup(sepolicy, "/usr/bin/sh", stat.S_IFLNK)
    assert "bin_t" in str(sh) and "shell_exec_t" not in str(sh)
    assert ahead.taken == len(planned) - 1
    # The walks stay in step after it.
    assert labels[-1] == lookup(sepolicy, _PATHS[-1], stat.S_IFREG)


def test_with_the_thread_every_label_is_the_one_asked_for(sepolicy: OSTree.SePolicy) -> None:
    """Both ends at once, as an import runs it: whichever answers, the labels are those
    of the types asked for, directories included."""
    planned = [(path, stat.S_IFDIR if path == "/tmp" else stat.S_IFREG) for path in _PATHS]
    asked = [(path, stat.S_IFMT(kind) | 0o755) for path, kind in planned]

    with LabelsAhead(sepolicy, planned) as ahead:
        labels = [ahead.label(path, mode) for path, mode in asked]

    assert labels == [lookup(sepolicy, path, mode) for path, mode in asked]
    assert "tmp_t" in str(labels[_PATHS.index("/tmp")])


def test_a_walk_that_leaves_the_plan_gets_its_labels_all_the_same(
    sepolicy: OSTree.SePolicy,
) -> None:
    ahead = LabelsAhead(sepolicy, _planned(stat.S_IFREG))
    ahead._look_ahead()

    assert ahead.label("/etc/shadow", stat.S_IFDIR) == lookup(sepolicy, "/etc/shadow", stat.S_IFDIR)
    assert ahead.taken == 0


def test_the_thread_stops_with_the_block(sepolicy: OSTree.SePolicy) -> None:
    """An import that fails (or needs fewer labels than planned) does not wait for the
    far end to finish its walk."""
    planned = _planned(stat.S_IFREG) * 20
    with LabelsAhead(sepolicy, planned) as ahead:
        pass
    looked_up = sum(isinstance(label, str) for label in ahead._found)
    assert looked_up < len(planned) // 2


def test_a_lookup_that_fails_ahead_is_left_to_the_labeller(sepolicy: OSTree.SePolicy) -> None:
    """The thread stops at a lookup libselinux refuses (an empty path), and leaves it and
    all before it to the labeller, which meets the failure as any lookup's."""
    planned = [*_planned(stat.S_IFREG), ("", stat.S_IFREG)]
    ahead = LabelsAhead(sepolicy, planned)
    ahead._look_ahead()

    labels = [ahead.label(path, stat.S_IFREG) for path, _ in planned[:-1]]

    assert labels == [lookup(sepolicy, path, stat.S_IFREG) for path, _ in planned[:-1]]
    assert ahead.taken == 0
    with pytest.raises(GLib.Error, match="selabel_lookup"):
        ahead.label("", stat.S_IFREG)
