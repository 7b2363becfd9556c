"""Random layer stacks, each flattened by both sources and compared with the kernel.

Stacks of 3 to 6 layers over a small name space, so that layers collide often:
whiteouts, opaque directories, type changes, hardlinks, xattrs. Where
containers-storage refuses a stack, the blobs source must refuse it too.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pybootc.ocibuild import (
    Entry,
    Kind,
    Layer,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)
from tests.support import Oracle

pytestmark = pytest.mark.oracle

NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o700, 0o1777])
owners = st.sampled_from([0, 0, 1000])
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
# The kernel refuses a malformed security.capability, so it only ever gets a real one.
xattrs = st.dictionaries(
    st.sampled_from(["user.x", "user.y", "security.capability", "trusted.t"]),
    st.sampled_from([b"1", b"\x00\xff"]),
    max_size=2,
).map(lambda d: {k: CAPABILITY if k == "security.capability" else v for k, v in d.items()})


KINDS = ["file", "file", "dir", "dir", "symlink", "hardlink", "whiteout", "opaque", "fifo"]


@st.composite
def layers(draw: st.DrawFn) -> Layer:
    # Distinct paths, and a directory wherever the layer writes below a path:
    # layers as image builders make them, so that most stacks are accepted and
    # the collisions happen between layers.
    chosen = draw(st.lists(paths, min_size=1, max_size=8, unique=True))
    # containers-storage follows a symlink the same layer made (and can hang on a
    # FIFO written through one); pybootc refuses that. Such layers stay out here
    # and are covered by the breakout tests.
    parents = {p[:i] for p in chosen for i in range(len(p)) if p[i] == "/"}
    markers: list[Entry] = []
    entries: list[Entry] = []
    written_files: list[str] = []
    for path in chosen:
        kind = "dir" if path in parents else draw(st.sampled_from(KINDS))
        if kind == "file":
            entries.append(
                file(
                    path,
                    draw(st.binary(max_size=8)),
                    mode=draw(modes),
                    uid=draw(owners),
                    xattrs=draw(xattrs),
                )
            )
            written_files.append(path)
        elif kind == "dir":
            entries.append(
                directory(path, mode=draw(modes) | 0o700, uid=draw(owners), xattrs=draw(xattrs))
            )
        elif kind == "symlink":
            entries.append(symlink(path, draw(st.sampled_from(["a", "../b", "/c", "a/b"]))))
        elif kind == "hardlink" and written_files:
            entries.append(hardlink(path, draw(st.sampled_from(written_files))))
        elif kind == "whiteout":
            markers.append(whiteout(path))
        elif kind == "opaque":
            markers.append(opaque(path))
        elif kind == "fifo":
            entries.append(Entry(path, Kind.FIFO, mode=0o644))
    # Markers usually come first, as the image spec recommends; sometimes anywhere.
    ordered = markers + entries if draw(st.integers(0, 4)) else entries + markers
    return layer(*ordered)


@settings(
    max_examples=220,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stack=st.lists(layers(), min_size=3, max_size=6))
def test_random_stacks_match_the_kernel(oracle: Oracle, stack: list[Layer]) -> None:
    outcome = oracle.compare(stack)
    event("refused: " + outcome.kernel[-60:] if isinstance(outcome.kernel, str) else "flattened")
    outcome.assert_agree()
