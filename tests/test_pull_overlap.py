"""The container backend reads each layer into its commit as soon as containers-storage
has unpacked it, while the pull goes on with the next ones.

A skopeo in front of the real one holds the pull open after the real copy has finished,
until the layer commits it waits for are in the repo: so they can only have come from a
read made while the pull was still running. Without one, it gives up after a minute and
the test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, file, layer
from tests.backend_support import (
    install,
    layout_layer_digests,
    ok,
    one_error_line,
    skopeo_in_front,
    state,
    switch_oci,
)

_WAIT_S = 60


def _holding_skopeo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Path, commits: int, *, fail: bool
) -> Path:
    """Put a skopeo on PATH whose copies into containers-storage, once the real copy is
    done, wait for `commits` layer commits in the target's repo and then touch the file
    returned; with `fail`, that copy then fails as skopeo would."""
    seen = tmp_path / "commits-seen-while-pulling"
    refs = target / "ostree/repo/refs/heads/ostree/container/blob"
    ending = (
        'echo \'time="now" level=fatal msg="writing blob: connection reset by peer"\' >&2; exit 1'
        if fail
        else "exit $status"
    )
    skopeo_in_front(
        tmp_path / "bin",
        monkeypatch,
        '{real} "$@"; status=$?\n'
        'case "$*" in *" copy "*" containers-storage:"*) ;; *) exit $status;; esac\n'
        f"i=0; while [ $i -lt {_WAIT_S * 10} ]; do\n"
        f'  if [ "$(ls {refs} 2>/dev/null | wc -l)" -ge {commits} ]; then touch {seen}; break; fi\n'
        "  sleep 0.1; i=$((i + 1))\ndone\n"
        f"{ending}\n",
    )
    return seen


def test_layers_are_read_while_the_pull_still_runs(
    tmp_path: Path, target: Path, other_target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0", extra=(layer(file("etc/motd", "hello")),)))
    ok(install(other_target, layout.ref("v1"), backend="ostree"))
    layers = len(layout_layer_digests(layout, "v1"))
    seen = _holding_skopeo(tmp_path, monkeypatch, target, layers, fail=False)
    ok(install(target, layout.ref("v1"), backend="container"))
    assert seen.exists(), "no layer commit was made while the pull ran"
    # What was read early is the image: the same commit as the ostree backend's.
    assert (
        Sysroot.open(target).deployments()[0].checksum
        == Sysroot.open(other_target).deployments()[0].checksum
    )


def test_a_layer_refused_while_the_pull_runs_is_refused_in_the_same_words(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("evil", sample_image("1.0", extra=(layer(file("../escape/x", "evil")),)))
    digests = layout_layer_digests(layout, "evil")
    # Every layer below the hostile top one is read while the pull is held open.
    seen = _holding_skopeo(tmp_path, monkeypatch, target, len(digests) - 1, fail=False)
    line = one_error_line(install(target, layout.ref("evil"), backend="container"))
    assert seen.exists()
    assert line.startswith(f"error: Installing to {target}: ")
    assert line.endswith(
        f'Layer {digests[-1]}: Invalid path "../escape/x": ".." is not allowed in a layer'
    )
    assert list(target.iterdir()) == []
    assert not (target.parent / "escape").exists()


def test_a_pull_that_fails_is_what_is_said_even_after_a_layer_was_refused(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As without the early reads: the pull's failure comes first."""
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("evil", sample_image("1.0", extra=(layer(file("../escape/x", "evil")),)))
    commits = len(layout_layer_digests(layout, "evil")) - 1
    seen = _holding_skopeo(tmp_path, monkeypatch, target, commits, fail=True)
    line = one_error_line(install(target, layout.ref("evil"), backend="container"))
    assert seen.exists()
    assert line.endswith("writing blob: connection reset by peer"), line
    assert list(target.iterdir()) == []


def test_an_update_checks_the_names_of_its_new_layers_only(tmp_path: Path, target: Path) -> None:
    """A layer committed before passed the name rules when its commit was made, from
    the same bytes: an update reads the tar-split data of the layers it brings, not
    that of every layer below them again. (Garbled, v1's would fail the update.)"""
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    ok(install(target, layout.ref("v1"), backend="container"))
    split_data = list((target / "ostree/bootc/storage/overlay-layers").glob("*.tar-split.gz"))
    assert len(split_data) == len(layout_layer_digests(layout, "v1"))
    for path in split_data:
        path.write_bytes(b"not gzip")
    layout.add_image("v2", sample_image("1.0", extra=(layer(file("etc/motd", "v2")),)))
    ok(switch_oci(target, layout, "v2"))
    assert all(path.read_bytes() == b"not gzip" for path in split_data), "v1 came again"
    assert (
        Sysroot.open(target).deployments()[0].deployment_path / "usr/etc/motd"
    ).read_text() == "v2"
    # A new layer's names are read all the same: one that climbs out is refused.
    layout.add_image("evil", sample_image("1.0", extra=(layer(file("../escape/x", "evil")),)))
    before = state(target)
    line = one_error_line(switch_oci(target, layout, "evil"))
    digest = layout_layer_digests(layout, "evil")[-1]
    assert line.endswith(
        f'Layer {digest}: Invalid path "../escape/x": ".." is not allowed in a layer'
    ), line
    assert state(target) == before
