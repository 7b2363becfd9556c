"""Every rule of layer-semantics.md, each checked against the kernel's overlay view.

Each case states what the rule means for the tree (so that agreeing with the
kernel is not the only thing asserted) and then asserts that both sources,
tar blobs and containers-storage diff directories, give the kernel's tree.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pybootc.commands.flatten import Source
from pybootc.sample.ocibuild import (
    Compression,
    Entry,
    Kind,
    Layer,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    sparse_file,
    symlink,
    whiteout,
)
from tests.support import (
    ACL_AS_MODE_750,
    ACL_EXTENDED,
    ACL_GROUP,
    ACL_MASK,
    ACL_NO_ID,
    ACL_OTHER,
    ACL_OWNER,
    ACL_USER,
    Oracle,
    Outcome,
    Tree,
    acl,
    tar_header,
)

pytestmark = pytest.mark.oracle

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
# The same capability in revision 3, for the namespaces whose root is uid 0 and 1000.
CAPABILITY_V3_ROOT_0 = bytes.fromhex("010000030020000000000000000000000000000000000000")
CAPABILITY_V3_ROOT_1000 = bytes.fromhex("0100000300200000000000000000000000000000e8030000")


ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
ENTRIES_750 = ((ACL_OWNER, 7, ACL_NO_ID), (ACL_GROUP, 5, ACL_NO_ID), (ACL_OTHER, 0, ACL_NO_ID))
# ACL_EXTENDED with ids where the kernel keeps none, and after a chmod to 0750.
ACL_EXTENDED_WITH_IDS = acl(
    (ACL_OWNER, 6, 0), (ACL_USER, 6, 1000), (ACL_GROUP, 4, 7), (ACL_MASK, 6, 0), (ACL_OTHER, 4, 3)
)
ACL_EXTENDED_AS_750 = acl(
    (ACL_OWNER, 7, ACL_NO_ID),
    (ACL_USER, 6, 1000),
    (ACL_GROUP, 4, ACL_NO_ID),
    (ACL_MASK, 5, ACL_NO_ID),
    (ACL_OTHER, 0, ACL_NO_ID),
)


def by_path(tree: Tree) -> dict[str, object]:
    return {e.path: e for e in tree}


@dataclass(frozen=True)
class Case:
    layers: tuple[Layer, ...]
    # Asserts what the rule means for the flattened tree; None for refusals.
    expect: Callable[[dict[str, object]], bool] | None = None
    # For a refused image: a fragment of pybootc's error message.
    refused: str = ""


def has(*paths: str) -> Callable[[dict[str, object]], bool]:
    return lambda t: all(p in t for p in paths)


def lacks(*paths: str) -> Callable[[dict[str, object]], bool]:
    return lambda t: not any(p in t for p in paths)


def both(*checks: Callable[[dict[str, object]], bool]) -> Callable[[dict[str, object]], bool]:
    return lambda t: all(c(t) for c in checks)


def attr(path: str, **want: object) -> Callable[[dict[str, object]], bool]:
    return lambda t: path in t and all(getattr(t[path], k) == v for k, v in want.items())


L = layer


def raw(*blocks: bytes) -> Layer:
    return Layer((), raw=b"".join(blocks))


END = bytes(2 * tarfile.BLOCKSIZE)
BASE = L(file("x", "1"), directory("d"), file("d/y", "2"))
# A PAX global header of 400 bytes of records whose 45th byte is a '3': tar-split keeps
# its data unpadded, so that a misaligned read of its segment would see a device there.
_GLOBAL = {"comment": "a" * 32 + "3" + "a" * 354}
# A name whose 57th byte is a '5': a misaligned read of the segment of a second PAX
# global header, named so, would see a directory named like a whiteout.
_NAME_5 = ".wh." + "n" * 52 + "5" + "m" * 10


def _global_header(name: str, length: int) -> bytes:
    """A PAX global header named `name`, with a comment of `length` characters (the
    record's length must come to three digits, as it does for 87 to 986)."""
    body = f" comment={'c' * length}\n"
    record = f"{len(body) + len(str(len(body) + 3))}{body}".encode()
    header = tar_header(name, tarfile.XGLTYPE, size=len(record))
    return header + record.ljust(-(-len(record) // 512) * 512, b"\0")


CASES: dict[str, Case] = {
    # Applying an entry
    "dir over dir replaces attributes, keeps children": Case(
        (
            L(directory("a", mode=0o700, uid=5, xattrs={"user.k": b"v"}), file("a/x")),
            L(directory("a", mode=0o750, gid=7)),
        ),
        both(has("a/x"), attr("a", mode=0o750, uid=0, gid=7, xattrs=())),
    ),
    "file over dir unlinks the directory": Case(
        (L(directory("a"), file("a/x")), L(file("a", "now a file"))),
        both(attr("a", kind="file"), lacks("a/x")),
    ),
    "dir over file replaces the file": Case(
        (L(file("a", "file")), L(directory("a"), file("a/y"))),
        both(attr("a", kind="dir"), has("a/y")),
    ),
    "symlink over dir unlinks the directory": Case(
        (L(directory("s"), file("s/f")), L(symlink("s", "t"))),
        both(attr("s", kind="symlink", target="t"), lacks("s/f")),
    ),
    "dir over symlink to dir is a new directory": Case(
        (L(directory("t"), file("t/f"), symlink("s", "t")), L(directory("s"), file("s/g"))),
        both(attr("s", kind="dir"), has("s/g", "t/f"), lacks("s/f")),
    ),
    "a write below a lower symlink makes a real directory (usrmerge)": Case(
        (
            L(directory("usr"), directory("usr/lib"), file("usr/lib/z"), symlink("lib", "usr/lib")),
            L(file("lib/y", "y")),
        ),
        both(attr("lib", kind="dir"), has("lib/y", "usr/lib/z"), lacks("usr/lib/y", "lib/z")),
    ),
    "implied parents are created 0755 root and hide the lower attributes": Case(
        (L(directory("a", mode=0o700, uid=5), file("a/x")), L(file("a/b/c", "c"))),
        both(attr("a", mode=0o755, uid=0), attr("a/b", mode=0o755), has("a/x", "a/b/c")),
    ),
    "overwriting one hardlinked name keeps the others linked": Case(
        (L(file("a", "A"), hardlink("b", "a"), hardlink("c", "a")), L(file("b", "B"))),
        both(attr("a", link_group="a"), attr("c", link_group="a"), attr("b", link_group=None)),
    ),
    # Whiteouts
    "whiteout removes a path and everything below it": Case(
        (L(directory("d"), directory("d/e"), file("d/e/f"), file("keep")), L(whiteout("d"))),
        both(lacks("d", "d/e", "d/e/f"), has("keep")),
    ),
    "whiteout of a missing path does nothing but imply its parent": Case(
        (L(file("z")), L(whiteout("q"), whiteout("nope/deeper"))),
        both(has("z", "nope"), lacks("q", "nope/deeper")),
    ),
    "whiteout applies to lower layers only: the same layer's later dir merges": Case(
        (L(directory("x"), file("x/old")), L(whiteout("x"), directory("x"), file("x/new"))),
        has("x/old", "x/new"),
    ),
    "whiteout then a file of the same name in one layer": Case(
        (L(file("x", "old")), L(whiteout("x"), file("x", "new"))),
        attr("x", size=3),
    ),
    "whiteout after the same layer wrote the name is refused": Case(
        (L(file("x", "lower")), L(file("x", "same"), whiteout("x"))),
        refused="which the same layer writes",
    ),
    "a 0:0 character device in a layer is a whiteout": Case(
        (L(file("x", "x")), L(Entry("x", Kind.CHAR, mode=0o600))),
        lacks("x"),
    ),
    "whiteout of one hardlinked name keeps the content under the others": Case(
        (L(file("a", "A"), hardlink("b", "a")), L(whiteout("a"))),
        both(lacks("a"), attr("b", size=1, link_group=None)),
    ),
    # Opaque directories
    "opaque hides lower children and keeps the directory": Case(
        (
            L(directory("d", mode=0o700), file("d/old"), directory("d/sub"), file("d/sub/o")),
            L(opaque("d"), file("d/new")),
        ),
        both(has("d", "d/new"), lacks("d/old", "d/sub", "d/sub/o")),
    ),
    "opaque applies before its layer whatever the tar order": Case(
        (
            L(directory("d"), file("d/old"), directory("d/sub"), file("d/sub/o")),
            L(directory("d"), file("d/new"), directory("d/sub"), file("d/sub/n"), opaque("d")),
        ),
        both(has("d/new", "d/sub/n"), lacks("d/old", "d/sub/o")),
    ),
    "opaque keeps the same layer's implied parents": Case(
        (
            L(directory("d"), file("d/old"), directory("d/a"), file("d/a/o")),
            L(opaque("d"), file("d/a/b/c")),
        ),
        both(has("d/a/b/c"), lacks("d/old", "d/a/o")),
    ),
    "opaque marker on a directory the layer does not list": Case(
        (L(directory("d"), file("d/x")), L(opaque("d"))),
        both(has("d"), lacks("d/x")),
    ),
    "opaque marker at the root is ignored, as by overlayfs": Case(
        (L(file("x"), directory("d")), L(file(".wh..wh..opq"), file("n"))),
        has("x", "d", "n"),
    ),
    "only the exact opaque name is opaque": Case(
        (L(directory("d"), file("d/x"), file("d/.wh..opqX-target")), L(file("d/.wh..wh..opqX"))),
        has("d/x"),
    ),
    # Invalid whiteout names
    "whiteout name .wh. is refused": Case(
        (L(file("x")), L(file(".wh."))), refused="Invalid whiteout"
    ),
    "whiteout name .wh.. is refused": Case(
        (L(file("x")), L(file(".wh.."))), refused="Invalid whiteout"
    ),
    "whiteout name .wh... is refused": Case(
        (L(file("x")), L(file(".wh..."))), refused="Invalid whiteout"
    ),
    "whiteout name d/.wh.. is refused": Case(
        (L(directory("d"), file("d/x")), L(file("d/.wh.."))), refused="Invalid whiteout"
    ),
    # Hardlinks
    "hardlink targets are relative to the image root": Case(
        (L(directory("etc"), file("etc/p", "P"), hardlink("l", "/etc/p")),),
        both(attr("l", link_group="etc/p"), attr("etc/p", link_group="etc/p")),
    ),
    "a hardlink to a symlink links the symlink itself": Case(
        (L(symlink("s", "/etc/passwd"), hardlink("h", "s")),),
        both(attr("h", kind="symlink", target="/etc/passwd", link_group="h")),
    ),
    "a hardlink's own header applies to the shared inode": Case(
        (
            L(
                file("a", "A", mode=0o600, uid=1),
                Entry("b", Kind.HARDLINK, linkname="a", mode=0o755, uid=7),
            ),
        ),
        both(attr("a", mode=0o755, uid=7), attr("b", link_group="a")),
    ),
    "a hardlink header that changes no owner keeps the inode's capabilities": Case(
        (L(file("a", "A", xattrs={"security.capability": CAPABILITY}), hardlink("b", "a")),),
        attr("b", link_group="a", xattrs=(("security.capability", CAPABILITY),)),
    ),
    "a hardlink to a lower layer's file is refused": Case(
        (L(file("t", "t")), L(hardlink("l", "t"))), refused="not in this layer"
    ),
    "a hardlink to a later entry is refused": Case(
        (L(hardlink("l", "t"), file("t")),), refused="not in this layer"
    ),
    "a hardlink to a directory is refused": Case(
        (L(directory("dd"), hardlink("l", "dd")),), refused="is a directory"
    ),
    # xattrs and metadata
    "security.capability, security.ima and user xattrs are kept byte for byte": Case(
        (
            L(
                file(
                    "ping",
                    "p",
                    mode=0o4755,
                    xattrs={
                        "security.capability": CAPABILITY,
                        "security.ima": b"\x03\x02",
                        "user.a": b"\xff\x00",
                    },
                )
            ),
        ),
        attr(
            "ping",
            mode=0o4755,
            xattrs=(
                ("security.capability", CAPABILITY),
                ("security.ima", b"\x03\x02"),
                ("user.a", b"\xff\x00"),
            ),
        ),
    ),
    "a capability for the namespace uid 0 is root of is kept in revision 2": Case(
        (
            L(
                file("v3", "p", xattrs={"security.capability": CAPABILITY_V3_ROOT_0}),
                file("other", "p", xattrs={"security.capability": CAPABILITY_V3_ROOT_1000}),
            ),
        ),
        both(
            attr("v3", xattrs=(("security.capability", CAPABILITY),)),
            attr("other", xattrs=(("security.capability", CAPABILITY_V3_ROOT_1000),)),
        ),
    ),
    "setuid and capabilities survive a non-root owner (chown, xattrs, chmod)": Case(
        (
            L(
                file(
                    "s",
                    "s",
                    mode=0o6755,
                    uid=1000,
                    gid=1000,
                    xattrs={"security.capability": CAPABILITY},
                )
            ),
        ),
        attr("s", mode=0o6755, uid=1000, gid=1000, xattrs=(("security.capability", CAPABILITY),)),
    ),
    "overlay-internal xattrs in an image are dropped": Case(
        (
            L(
                directory("d"),
                file("d/f", xattrs={"trusted.overlay.foo": b"bar", "trusted.other": b"z"}),
            ),
        ),
        attr("d/f", xattrs=(("trusted.other", b"z"),)),
    ),
    "sticky, setgid and zero modes are kept": Case(
        (
            L(
                directory("d", mode=0o1777),
                file("d/f", mode=0o2711, gid=5),
                directory("e", mode=0),
                file("e/x", mode=0),
            ),
        ),
        both(
            attr("d", mode=0o1777),
            attr("d/f", mode=0o2711, gid=5),
            attr("e", mode=0),
            attr("e/x", mode=0),
        ),
    ),
    # xattrs the kernel keeps otherwise than the image gives them (layers/kernel_xattrs.py).
    # It stores an access ACL only if the mode cannot say it, and gives the mode the
    # ACL's permissions (the group's from the mask), whatever the header's.
    "an access ACL the mode can say is not kept, and sets the mode": Case(
        (
            L(
                directory("d", mode=0o700, xattrs={ACCESS: ACL_AS_MODE_750}),
                file("d/f", mode=0o4600, xattrs={ACCESS: ACL_AS_MODE_750}),
                Entry("d/p", Kind.FIFO, mode=0o644, xattrs={ACCESS: ACL_AS_MODE_750}),
            ),
        ),
        both(
            attr("d", mode=0o750, xattrs=()),
            attr("d/f", mode=0o4750, xattrs=()),
            attr("d/p", mode=0o750, xattrs=()),
        ),
    ),
    "an extended access ACL is kept, and its mask gives the group's permissions": Case(
        (
            L(
                directory("d", xattrs={ACCESS: ACL_EXTENDED}),
                file("d/f", xattrs={ACCESS: ACL_EXTENDED}),
                directory("e", xattrs={DEFAULT: ACL_AS_MODE_750}),
            ),
        ),
        both(
            attr("d", mode=0o664, xattrs=((ACCESS, ACL_EXTENDED),)),
            attr("d/f", mode=0o664, xattrs=((ACCESS, ACL_EXTENDED),)),
            attr("e", mode=0o755, xattrs=((DEFAULT, ACL_AS_MODE_750),)),
        ),
    ),
    "an ACL keeps the ids of its named entries only": Case(
        (
            L(
                file("f", xattrs={ACCESS: ACL_EXTENDED_WITH_IDS}),
                directory("e", xattrs={DEFAULT: ACL_EXTENDED_WITH_IDS}),
            ),
        ),
        both(
            attr("f", mode=0o664, xattrs=((ACCESS, ACL_EXTENDED),)),
            attr("e", mode=0o755, xattrs=((DEFAULT, ACL_EXTENDED),)),
        ),
    ),
    "an ACL of no entries is no ACL, and leaves the mode": Case(
        (
            L(
                file("f", mode=0o640, xattrs={ACCESS: acl()}),
                directory("e", mode=0o710, xattrs={ACCESS: acl(), DEFAULT: acl()}),
            ),
        ),
        both(attr("f", mode=0o640, xattrs=()), attr("e", mode=0o710, xattrs=())),
    ),
    "an ACL of no value at all is no ACL": Case(
        (
            L(
                directory("e", mode=0o710, xattrs={ACCESS: b"", DEFAULT: b""}),
                file("f", mode=0o640, xattrs={ACCESS: b"", DEFAULT: b""}),
            ),
        ),
        both(attr("e", mode=0o710, xattrs=()), attr("f", mode=0o640, xattrs=())),
    ),
    "a hardlink's header rewrites the kept ACL of the inode it shares": Case(
        (L(file("f", xattrs={ACCESS: ACL_EXTENDED}), hardlink("g", "f", mode=0o750)),),
        both(attr("f", mode=0o750, xattrs=((ACCESS, ACL_EXTENDED_AS_750),)), has("g")),
    ),
    "xattrs the kernel does not support are left out, as containers-storage does": Case(
        (
            L(
                file("f", xattrs={"foo.bar": b"1", "system.foo": b"1", "user.kept": b"1"}),
                file("g", mode=0o600, xattrs={ACCESS: acl(*ENTRIES_750, version=3)}),
                symlink("l", "f", xattrs={ACCESS: ACL_AS_MODE_750}),
            ),
        ),
        both(
            attr("f", xattrs=(("user.kept", b"1"),)),
            attr("g", mode=0o600, xattrs=()),
            attr("l", kind="symlink", xattrs=()),
        ),
    ),
    "an access ACL the kernel cannot read is refused, as containers-storage does": Case(
        (L(file("f", xattrs={ACCESS: b"\x02\0\0\0\x01"})),),
        refused="Invalid argument",
    ),
    "an ACL that names the owner twice is refused": Case(
        (L(file("f", xattrs={ACCESS: acl(ENTRIES_750[0], *ENTRIES_750)})),),
        refused="Invalid argument",
    ),
    "an ACL with permissions beyond rwx is refused": Case(
        (L(file("f", xattrs={ACCESS: acl((ACL_OWNER, 0o17, ACL_NO_ID), *ENTRIES_750[1:])})),),
        refused="Invalid argument",
    ),
    "an ACL out of order is refused": Case(
        (L(file("f", xattrs={ACCESS: acl(ENTRIES_750[1], ENTRIES_750[0], ENTRIES_750[2])})),),
        refused="Invalid argument",
    ),
    "an ACL that names a user but has no mask is refused": Case(
        (L(file("f", xattrs={ACCESS: acl(ENTRIES_750[0], (ACL_USER, 7, 5), *ENTRIES_750[1:])})),),
        refused="Invalid argument",
    ),
    "a default ACL on a file is refused": Case(
        (L(file("f", xattrs={DEFAULT: ACL_AS_MODE_750})),),
        refused="Permission denied",
    ),
    # Devices
    "device nodes and fifos are part of the overlay view": Case(
        (
            L(
                Entry("c", Kind.CHAR, devmajor=1, devminor=3, mode=0o666),
                Entry("b", Kind.BLOCK, devmajor=7, devminor=0, mode=0o660),
                Entry("f", Kind.FIFO, mode=0o644),
            ),
        ),
        both(
            attr("c", kind="char", rdev=(1, 3)),
            attr("b", kind="block", rdev=(7, 0)),
            attr("f", kind="fifo"),
        ),
    ),
    # Paths
    "./x, x, x/ and /x are the same path": Case(
        (L(file("/abs", "a"), file("./dot", "d"), directory("dd/"), file("dd/e")),),
        has("abs", "dot", "dd", "dd/e"),
    ),
    "duplicate entries in one layer are refused, as containers-storage does": Case(
        (L(file("x", "one"), file("./x", "two")),), refused="Duplicate entry"
    ),
    "an entry below a file of the same layer is refused": Case(
        (L(file("p"), file("p/x")),), refused="not a directory"
    ),
    "PAX global headers are ignored": Case(
        (
            L(
                file("x", "x", xattrs={"user.a": b"1"}),
                file("y", "y"),
                global_headers={"path": "evil", "SCHILY.xattr.user.g": "g"},
            ),
        ),
        both(
            has("x", "y"),
            lacks("evil"),
            attr("x", xattrs=(("user.a", b"1"),)),
            attr("y", xattrs=()),
        ),
    ),
    "long names work in PAX, ustar prefix and GNU formats": Case(
        (
            L(file("a" * 120 + "/" + "b" * 150, "x"), symlink("l" * 200, "t" * 200)),
            L(file("c" * 90 + "/" + "d" * 90, "u"), tar_format=tarfile.USTAR_FORMAT),
            L(file("e" * 150, "g"), hardlink("f" * 150, "e" * 150), tar_format=tarfile.GNU_FORMAT),
        ),
        both(
            has("a" * 120 + "/" + "b" * 150, "c" * 90 + "/" + "d" * 90),
            attr("f" * 150, link_group="e" * 150),
        ),
    ),
    "sparse files come out at full size with zeros in the holes": Case(
        (L(sparse_file("sp", 1 << 20, [(4096, b"hello"), (700000, b"world")])),),
        attr("sp", size=1 << 20),
    ),
    # Tar streams as Go's reader (containers-storage's) reads them
    "a PAX record of no value is no record: the header's own field stands": Case(
        (
            raw(
                tar_header("f", uid=5, pax={"uid": "", "size": ""}, size=1),
                b"x".ljust(512, b"\0"),
                END,
            ),
        ),
        attr("f", uid=5, size=1),
    ),
    "a PAX number that is not one is refused": Case(
        (raw(tar_header("f", uid=5, pax={"uid": "x5"}), END),), refused="invalid PAX record"
    ),
    "a PAX time that is not one is refused": Case(
        (raw(tar_header("f", pax={"atime": "1e5"}), END),), refused="invalid PAX record"
    ),
    "an old-style member that its PAX path makes a file has its data": Case(
        (
            raw(
                tar_header("pf/", tarfile.AREGTYPE, size=4, pax={"path": "pfile"}),
                b"abcd".ljust(512, b"\0"),
                tar_header("next"),
                END,
            ),
        ),
        both(attr("pfile", kind="file", size=4), has("next")),
    ),
    "PAX global headers one after the other are no members": Case(
        (
            raw(
                tar_header("a"),
                _global_header("g3", 399),
                _global_header(_NAME_5, 399),
                tar_header("b"),
                END,
            ),
        ),
        both(has("a", "b"), lacks(_NAME_5)),
    ),
    "a zero block and then a member is refused": Case(
        (raw(tar_header("f"), bytes(tarfile.BLOCKSIZE), tar_header("g"), END),),
        refused="a zero block",
    ),
    "a header with a bad checksum after the first is refused": Case(
        (raw(tar_header("f"), b"\1" * tarfile.BLOCKSIZE, END),), refused="invalid header"
    ),
    "a header cut short is refused": Case(
        (raw(tar_header("f"), tar_header("g")[:300]),), refused="truncated header"
    ),
    "a layer of no bytes is a layer of no members": Case((BASE, raw(b"")), has("x", "d/y")),
    "a stream may end in its last member's padding": Case(
        (raw(tar_header("f", size=3), b"abc"),), attr("f", kind="file", size=3)
    ),
    "a stream that ends in a member's data is refused": Case(
        (raw(tar_header("f", size=10), b"abc"),), refused="truncated"
    ),
    "a regular file named with a slash is a file (here a whiteout)": Case(
        (BASE, raw(tar_header(".wh.x/", tarfile.REGTYPE), END)), both(lacks("x"), has("d/y"))
    ),
    "an old-style member is a directory by its PAX path, not its header's name": Case(
        (BASE, raw(tar_header(".wh.x/", tarfile.AREGTYPE, pax={"path": ".wh.x"}), END)),
        both(lacks("x", ".wh.x"), has("d/y")),
    ),
    "a PAX global header is no member, whatever its size": Case(
        (
            L(
                directory("etc"),
                file("etc/os-release", "hi\n"),
                global_headers=_GLOBAL,
            ),
        ),
        has("etc/os-release"),
    ),
    "a whiteout of a directory named like the opaque marker": Case(
        (
            L(directory("d"), file("d/a"), directory("d/.wh..wh..opq"), file("d/.wh..wh..opq/f")),
            L(file("d/.wh..wh..wh..opq")),
        ),
        both(has("d/a"), lacks("d/.wh..wh..opq")),
    ),
    # Compression
    "zstd and uncompressed layers": Case(
        (
            L(file("z", "zstd"), compression=Compression.ZSTD),
            L(file("n", "none"), compression=Compression.NONE),
        ),
        has("z", "n"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layer_rule(oracle: Oracle, name: str) -> None:
    case = CASES[name]
    outcome = oracle.compare(case.layers)
    if case.refused:
        assert isinstance(outcome.kernel, str), "containers-storage accepted the image"
        for source in ("blobs", "blob layer commits"):
            refusal = outcome.sources()[source]
            assert isinstance(refusal, str), f"{source} accepted the image"
            assert case.refused in refusal, f"{source}: {refusal}"
        return
    assert not isinstance(outcome.kernel, str), outcome.kernel
    assert case.expect is not None and case.expect(by_path(outcome.kernel)), (
        "rule not seen in the kernel's view"
    )
    outcome.assert_agree()


def test_sparse_file_content(oracle: Oracle) -> None:
    import hashlib

    tag = oracle.add([L(sparse_file("sp", 1 << 20, [(4096, b"hello"), (700000, b"world")]))])
    data = bytearray(1 << 20)
    data[4096:4101] = b"hello"
    data[700000:700005] = b"world"
    tree = oracle.flatten(tag, Source.BLOBS)
    assert not isinstance(tree, str)
    assert by_path(tree)["sp"].sha256 == hashlib.sha256(data).hexdigest()  # type: ignore[attr-defined]


def test_root_entry_sets_the_roots_metadata(oracle: Oracle, tmp_path: object) -> None:
    from pathlib import Path

    from pybootc.commands.flatten import Source, flatten_image

    tag = oracle.add([L(directory(".", mode=0o700, uid=3, xattrs={"user.r": b"1"}), file("x"))])
    out = Path(str(tmp_path)) / "out"
    flatten_image(oracle.layout.ref(tag), out, source=Source.BLOBS)
    st = out.stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, 3)


def _every_source(outcome: Outcome) -> dict[str, dict[str, object]]:
    trees = {name: tree for name, tree in outcome.sources().items()}
    for name, tree in trees.items():
        assert not isinstance(tree, str), f"{name}: {tree}"
    return {name: by_path(tree) for name, tree in trees.items() if not isinstance(tree, str)}


@pytest.mark.parametrize(
    "xattr", [("trusted.overlay.opaque", b"y"), ("trusted.overlay.redirect", b"/e")]
)
def test_image_level_overlay_xattrs_are_data_not_markers(
    oracle: Oracle, xattr: tuple[str, bytes]
) -> None:
    # containers-storage 1.43 (this machine's) writes an image's PAX trusted.overlay.*
    # into the diff directory, where overlayfs obeys it: an opaque directory hides the
    # lower d/x, a redirect shows e's files in d. Newer versions escape them. An
    # image's xattrs must never change what is visible, so every source drops them:
    # the storage's read the markers from the layer's members, and take an overlay
    # xattr in a diff directory of image layers for the image's own.
    name, value = xattr
    outcome = oracle.compare(
        [
            L(directory("d"), file("d/x"), directory("e"), file("e/y")),
            L(directory("d", xattrs={name: value}), file("d/n")),
        ]
    )
    for source, tree in _every_source(outcome).items():
        assert {"d/x", "d/n"} <= set(tree) and "d/y" not in tree, source
        assert tree["d"].xattrs == (), source  # type: ignore[attr-defined]


@pytest.mark.parametrize("form", ["ustar", "pax", "empty"])
def test_a_directory_named_like_a_whiteout_is_not_special(oracle: Oracle, form: str) -> None:
    # The rule: a *directory* `.wh.x/` is an ordinary directory. containers-storage
    # 1.43 (this machine's) takes it for a whiteout of x anyway, and makes the
    # directory again as the parent of .wh.x/f (0755, root), or not at all if it is
    # empty. Every source follows the rule, so x stays, and the directory has its
    # header's metadata: the storage's sources read the markers and that header from
    # the layer's members (with PAX records: a long name and an xattr).
    name = ".wh." + "x" * 120 if form == "pax" else ".wh.x"
    xattrs = {"user.kept": b"1"} if form == "pax" else {}
    below = () if form == "empty" else (file(f"{name}/f"),)
    outcome = oracle.compare(
        [L(file(name[4:])), L(directory(name, mode=0o700, uid=5, xattrs=xattrs), *below)]
    )
    for source, tree in _every_source(outcome).items():
        assert {name[4:], name} | {e.name for e in below} <= set(tree), source
        found = tree[name]
        assert (found.mode, found.uid) == (0o700, 5), source  # type: ignore[attr-defined]
        assert found.xattrs == tuple(xattrs.items()), source  # type: ignore[attr-defined]


def test_an_xattr_of_no_value(oracle: Oracle) -> None:
    # containers-storage 1.57 sets an xattr whose PAX record has no value, as the blobs
    # flatten does; 1.43 leaves it out (it reads Go's Xattrs, which skip empty values).
    # OSTree keeps none (libostree leaves them out of what it reads), so the layer
    # commits of both backends leave it out, on either release.
    outcome = oracle.compare([L(file("g", xattrs={"user.none": b"", "user.kept": b"v"}))])
    trees = _every_source(outcome)
    assert not isinstance(outcome.kernel, str)
    kernel = by_path(outcome.kernel)["g"].xattrs  # type: ignore[attr-defined]
    expected = {
        "blobs": (("user.kept", b"v"), ("user.none", b"")),
        "containers-storage": kernel,
        "blob layer commits": (("user.kept", b"v"),),
        "storage layer commits": (("user.kept", b"v"),),
    }
    for source, xattrs in expected.items():
        assert trees[source]["g"].xattrs == xattrs, source  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "records", [{"uid": str(1 << 32)}, {"GNU.sparse.size": "abc"}], ids=["uid", "sparse"]
)
def test_a_header_tarfile_cannot_take_is_one_error(oracle: Oracle, records: dict[str, str]) -> None:
    # Go takes an owner beyond 32 bits, and a sparse size that is not a number (it does
    # not make the file sparse); tarfile crashed on both, where the blob path now
    # refuses the layer in one line.
    outcome = oracle.compare([raw(tar_header("f", pax=records), END)])
    for source in ("blobs", "blob layer commits"):
        refusal = outcome.sources()[source]
        assert isinstance(refusal, str), f"{source} accepted the layer"
        assert "Invalid tar stream" in refusal, refusal


def test_an_old_style_directory_by_its_pax_path_is_not_special(oracle: Oracle) -> None:
    # Type NUL with the header's name `.wh.x` and the PAX path `.wh.x/`: Go's reader
    # (and so every source) makes a directory of it, which 1.43 takes for a whiteout.
    layer = raw(tar_header(".wh.x", tarfile.AREGTYPE, mode=0o700, pax={"path": ".wh.x/"}), END)
    for source, tree in _every_source(oracle.compare([BASE, layer])).items():
        assert {"x", ".wh.x"} <= set(tree), source


def test_a_whiteout_of_a_directory_named_like_a_whiteout(oracle: Oracle) -> None:
    # `.wh..wh.x` hides the directory `.wh.x`, not x (1.43 had taken that directory
    # for a whiteout of x, so its kernel view lacks x).
    outcome = oracle.compare(
        [L(file("x")), L(directory(".wh.x"), file(".wh.x/f")), L(file(".wh..wh.x"))]
    )
    for source, tree in _every_source(outcome).items():
        assert "x" in tree and ".wh.x" not in tree, source


def test_a_hardlink_to_a_whiteout_device_is_refused_by_every_source(oracle: Oracle) -> None:
    # containers-storage links the device (a second whiteout); the blob path refuses a
    # hardlink to a whiteout, and the storage's sources refuse it alike.
    device = Entry("x", Kind.CHAR, devmajor=0, devminor=0)
    outcome = oracle.compare([L(file("x"), file("y")), L(device, hardlink("y", "x"))])
    for source, refusal in outcome.sources().items():
        assert isinstance(refusal, str), f"{source} accepted the image"
        assert 'Hardlink "y" to "x": the target is a whiteout' in refusal, source


def test_a_directory_named_like_a_whiteout_of_a_name_the_layer_has(oracle: Oracle) -> None:
    # containers-storage 1.43 cannot make that whiteout (the name is taken) and refuses
    # the layer; the blob path keeps both, as the rule says.
    outcome = oracle.compare([L(file("x"), directory(".wh.x"), file(".wh.x/f"))])
    sources = outcome.sources()
    if isinstance(outcome.kernel, str):
        sources = {name: sources[name] for name in ("blobs", "blob layer commits")}
    for source, tree in sources.items():
        assert not isinstance(tree, str), f"{source}: {tree}"
        assert {"x", ".wh.x", ".wh.x/f"} <= set(by_path(tree)), source
