"""Layers that try to reach outside the output: an error or a contained tree, never more.

A `victim/` directory sits beside the output; it must stay exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pybootc.commands.flatten import Source, flatten_image
from pybootc.errors import BootcError
from pybootc.layers.listing import list_tree
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import (
    ImageSpec,
    Layer,
    OciLayout,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)
from tests.backend_support import bootc, install, layout_layer_digests, one_error_line

SECRET = "victim secret"


def cases(victim: Path) -> dict[str, list[Layer]]:
    v = str(victim)
    return {
        "dotdot entry": [layer(file("../victim/x", "evil"))],
        "sibling prefix": [layer(file("../dest-evil/x", "evil"))],
        "absolute entry": [layer(file(f"{v}/x", "evil"))],
        "dotdot whiteout": [layer(file("y")), layer(file("../victim/.wh.secret"))],
        "write through an absolute symlink, same layer": [
            layer(symlink("s", v), file("s/x", "evil"))
        ],
        "write through a relative symlink, later layer": [
            layer(symlink("s", "../victim")),
            layer(file("s/x", "evil")),
        ],
        "symlink chain": [
            layer(symlink("a", "b"), symlink("b", "../../victim")),
            layer(file("a/x", "evil")),
        ],
        "symlink replaces a directory, then writes below": [
            layer(directory("d")),
            layer(symlink("d", v)),
            layer(file("d/x", "evil")),
        ],
        "hardlink to ../": [layer(hardlink("h", "../victim/secret"))],
        "hardlink to /etc/passwd": [layer(hardlink("h", "/etc/passwd"))],
        "hardlink through a symlink": [layer(symlink("s", v), hardlink("h", "s/secret"))],
        "hardlink to a symlink to a host file": [
            layer(symlink("s", f"{v}/secret"), hardlink("h", "s", mode=0o777, uid=1234)),
        ],
        "whiteout through a symlink": [layer(symlink("s", v)), layer(whiteout("s/secret"))],
        "opaque through a symlink": [layer(symlink("s", v)), layer(opaque("s"))],
        "whiteout through a symlink, same layer": [layer(symlink("s", v), whiteout("s/secret"))],
        "opaque through a symlink, same layer": [layer(symlink("s", v), opaque("s"))],
        "whiteout through a symlink to a directory of the image, same layer": [
            layer(directory("d"), file("d/x")),
            layer(directory("d"), symlink("s", "d"), whiteout("s/x")),
        ],
    }


NAMES = list(cases(Path("/victim")))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("source", [Source.BLOBS, Source.CONTAINERS_STORAGE])
def test_breakout_is_refused_or_contained(tmp_path: Path, name: str, source: Source) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text(SECRET)
    before = list_tree(victim, include_root=True)
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("evil", ImageSpec(tuple(cases(victim)[name])))
    out = tmp_path / "dest"
    try:
        flatten_image(layout.ref("evil"), out, source=source)
    except BootcError:
        assert not out.exists()
    else:
        for entry in list_tree(out):
            if entry.kind == "file":
                assert SECRET not in (out / entry.path).read_text(errors="replace")
                assert "root:x:0:0" not in (out / entry.path).read_text(errors="replace")
    assert list_tree(victim, include_root=True) == before
    assert not (tmp_path / "dest-evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (
        ["dest", "oci", "victim"],
        ["oci", "victim"],
    )


def _outcome(tmp_path: Path, name: str, source: Source) -> object:
    """What flattening the case gives: the tree below the output, or "refused"."""
    work = tmp_path / source.value
    victim = work / "victim"
    victim.mkdir(parents=True)
    (victim / "secret").write_text(SECRET)
    layout = OciLayout(work / "oci")
    # The victim's path is part of some cases: the same name for both sources.
    spec = ImageSpec(tuple(cases(Path("/var/pybootc-victim"))[name]))
    layout.add_image("evil", spec)
    try:
        flatten_image(layout.ref("evil"), work / "dest", source=source)
    except BootcError:
        return "refused"
    return list_tree(work / "dest")


@pytest.mark.parametrize("name", NAMES)
def test_both_sources_refuse_or_contain_each_case_alike(tmp_path: Path, name: str) -> None:
    """The ostree backend reads the blobs; the container backend reads what
    containers-storage unpacked, whose names it cleans (`../x` becomes `x`)."""
    assert _outcome(tmp_path, name, Source.BLOBS) == _outcome(
        tmp_path, name, Source.CONTAINERS_STORAGE
    )


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_layer_that_climbs_out_is_refused_by_both_backends_alike(
    tmp_path: Path, target: Path, backend: str
) -> None:
    layout = OciLayout(tmp_path / "oci")
    evil = layer(file("../escape/x", "evil"))
    layout.add_image("evil", sample_image("1.0", extra=(evil,)))
    proc = bootc(
        "install", "to-filesystem", "--backend", backend,
        "--source-imgref", layout.ref("evil"), str(target),
    )  # fmt: skip
    digest = layout_layer_digests(layout, "evil")[-1]
    line = one_error_line(proc)
    assert line.startswith(f"error: Installing to {target}: ")
    assert line.endswith(
        f'Layer {digest}: Invalid path "../escape/x": ".." is not allowed in a layer'
    )
    assert list(target.iterdir()) == []
    assert not (target.parent / "escape").exists()


def _installed(target: Path, image: str, backend: str) -> str:
    """What installing the image with `backend` gives: the deployed commit, or the error
    line (with the target's path taken out, as it differs between the two)."""
    proc = install(target, image, backend=backend)
    if proc.returncode != 0:
        return one_error_line(proc).replace(str(target), "TARGET")
    return Sysroot.open(target).deployments()[0].checksum


@pytest.mark.parametrize("name", NAMES)
def test_both_backends_refuse_or_deploy_each_case_alike(
    tmp_path: Path, target: Path, other_target: Path, name: str
) -> None:
    """The same image through the real stores: the ostree backend's layer commits and
    the container backend's storage refuse it with the same line, or deploy the same
    commit; the victim beside them stays as it was."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text(SECRET)
    before = list_tree(victim, include_root=True)
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("evil", sample_image("1.0", extra=tuple(cases(victim)[name])))
    outcomes = {
        backend: _installed(path, layout.ref("evil"), backend)
        for backend, path in (("ostree", target), ("container", other_target))
    }
    assert outcomes["ostree"] == outcomes["container"]
    assert list_tree(victim, include_root=True) == before
    assert not (tmp_path / "dest-evil").exists()
