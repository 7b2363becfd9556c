"""Layers that try to reach outside the output: an error or a contained tree, never more.

A `victim/` directory sits beside the output; it must stay exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.image_flatten import Source, flatten_image
from pybootc.layers.listing import list_tree
from pybootc.ocibuild import (
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
