"""Kernel arguments: refused where they could break out of a boot entry, and the
image's own `usr/lib/bootc/kargs.d`, applied at install, switch and upgrade as upstream.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.ostree.kargs import extended, image_kargs, parse_kargs_file, split, with_image_change
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import Layer, OciLayout, file, layer
from tests.backend_support import bootc, install, ok, one_error_line, state, switch_oci


def kargs_d(**files: str) -> Layer:
    return layer(*(file(f"usr/lib/bootc/kargs.d/{name}", text) for name, text in files.items()))


def options(target: Path) -> list[str]:
    """The `options` line of each boot entry, newest deployment first."""
    found = []
    for entry in sorted((target / "boot/loader/entries").glob("*.conf"), reverse=True):
        lines = [line for line in entry.read_text().splitlines() if line.startswith("options ")]
        found.append(lines[0].removeprefix("options "))
    return found


def image_options(target: Path) -> list[str]:
    """The first entry's kargs without the `ostree=` one libostree adds (once)."""
    params = split(options(target)[0])
    assert len([p for p in params if p.startswith("ostree=")]) == 1, params
    return [p for p in params if not p.startswith("ostree=")]


def install_ok(target: Path, imgref: str, *extra: str, backend: str = "ostree") -> str:
    return ok(install(target, imgref, *extra, backend=backend))


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    found = OciLayout(tmp_path_factory.mktemp("kargs") / "oci")
    found.add_image("plain", sample_image("1.0"))
    first = kargs_d(**{
        "10-console.toml": 'kargs = ["console=ttyS0,115200", "quiet"]\n',
        "20-other-arch.toml": 'kargs = ["only-on-s390x"]\nmatch-architectures = ["s390x"]\n',
        "30-this-arch.toml": 'kargs = ["mitigations=auto"]\nmatch-architectures = ["x86_64"]\n',
        "README": "not a toml file: ignored\n",
    })  # fmt: skip
    found.add_image("v1", sample_image("1.0", extra=(first,)))
    second = kargs_d(**{"10-console.toml": 'kargs = ["console=ttyS0,115200", "nosmt"]\n'})
    found.add_image("v2", sample_image("2.0", extra=(second,)))
    for name, (text, _) in BAD_FILES.items():
        bad = kargs_d(**{"50-bad.toml": text})
        found.add_image(f"bad-{name}", sample_image("2.0", extra=(bad,)))
    return found


# --- the parser and the diff, as upstream's unit tests have them ---


def test_split_keeps_quoted_spaces_and_splits_on_any_other_whitespace() -> None:
    assert split('a=1  b="x y"\tc') == ["a=1", 'b="x y"', "c"]


def test_extended_adds_only_parameters_not_already_there() -> None:
    # Dashes and underscores in a key are the same to the kernel.
    assert extended(["a=1", "rd.auto-lvm=1"], ["a=1", "rd.auto_lvm=1", "a=2", "b"]) == [
        "a=1",
        "rd.auto-lvm=1",
        "a=2",
        "b",
    ]


def test_an_image_change_moves_kargs_from_old_files_to_new_and_keeps_the_rest() -> None:
    current = ["root=UUID=x", "console=tty0", "by-hand", "quiet"]
    assert with_image_change(current, ["console=tty0", "quiet"], ["console=ttyS0", "quiet"]) == [
        "root=UUID=x",
        "by-hand",
        "quiet",
        "console=ttyS0",
    ]
    # An image without kargs.d keeps the deployment's and adds the old image's.
    assert with_image_change(["root=UUID=x"], ["quiet"], None) == ["root=UUID=x", "quiet"]


def test_kargs_d_files_apply_in_name_order_and_by_architecture() -> None:
    files = {
        "20-b.toml": b'kargs = ["b"]\n',
        "10-a.toml": b'kargs = ["a", "shared"]\n',
        "15-arm.toml": b'kargs = ["arm"]\nmatch-architectures = ["aarch64"]\n',
        "30-c.toml": b'kargs = ["shared", "c"]\nmatch-architectures = ["x86_64", "aarch64"]\n',
        "notes.txt": b"ignored",
    }
    assert image_kargs(files, "x86_64") == ["a", "shared", "b", "c"]
    assert image_kargs(files, "aarch64") == ["a", "shared", "arm", "b", "c"]
    assert image_kargs(None, "x86_64") is None


# A kargs.d file an image may carry, by name: its text, and what the refusal says.
BAD_FILES = {
    "newline": ('kargs = ["a=b\\ninitrd /evil"]\n', r"Invalid kernel argument 'a=b\ninitrd /evil'"),
    "nul": ('kargs = ["a\\u0000b"]\n', "control character or non-UTF-8 byte (U+0000)"),
    "unknown-field": ('kargs = []\nfoo = "bar"\n', "unknown field 'foo'"),
    "missing-kargs": ('match-architectures = ["x86_64"]\n', "missing field 'kargs'"),
    "not-strings": ("kargs = [1]\n", "'kargs' must be a list of strings"),
    "not-toml": ("kargs = [\n", "Parsing usr/lib/bootc/kargs.d/50-bad.toml: "),
    # Python's TOML parser recurses into nested arrays.
    "too-deep": ("kargs = " + "[" * 5000 + "]" * 5000 + "\n", "it nests too deeply"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_kargs_file_is_refused_with_its_name(name: str) -> None:
    text, message = BAD_FILES[name]
    with pytest.raises(BootcError) as refused:
        parse_kargs_file("50-bad.toml", text)
    assert message in str(refused.value)
    assert "usr/lib/bootc/kargs.d/50-bad.toml" in str(refused.value)


# --- end to end: what lands on the boot entry's options line ---

# Kargs from --karg that no sysroot may ever see, and why each is refused. (NUL cannot
# be in an argv at all; it is refused from a kargs.d file above.)
CONTROL = "it holds a control character or non-UTF-8 byte"
BAD_KARGS = {
    "newline": ("a=b\ninitrd /evil", f"{CONTROL} (U+000A)"),
    "tab": ("a=b\tc", f"{CONTROL} (U+0009)"),
    "escape": ("a=\x1b[2J", f"{CONTROL} (U+001B)"),
    "delete": ("a=\x7f", f"{CONTROL} (U+007F)"),
    "C1 control": ("a=\x85", f"{CONTROL} (U+0085)"),
    "unbalanced quote": ('a="b c', "its double quotes are unbalanced"),
}


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_install_then_switch_apply_the_image_kargs_d_as_upstream(
    layout: OciLayout, target: Path, backend: str
) -> None:
    install_ok(target, layout.ref("v1"), "--karg", "by-hand=1", "--karg", "quiet", backend=backend)
    # kargs.d in name order (the s390x file skipped), then --karg (quiet is there already).
    assert image_options(target) == [
        "console=ttyS0,115200",
        "quiet",
        "mitigations=auto",
        "by-hand=1",
    ]
    # v2's files drop quiet and mitigations=auto and add nosmt; by-hand=1 stays.
    ok(switch_oci(target, layout, "v2"))
    assert image_options(target) == ["console=ttyS0,115200", "by-hand=1", "nosmt"]
    # An image without kargs.d keeps what the deployment has.
    ok(
        bootc(
            "switch", "--transport", "oci", layout.ref("plain").removeprefix("oci:"), sysroot=target
        )
    )
    assert image_options(target) == ["console=ttyS0,115200", "by-hand=1", "nosmt"]


def test_upgrade_applies_the_new_build_s_kargs_d(tmp_path: Path, target: Path) -> None:
    stream = OciLayout(tmp_path / "stream")
    stream.add_image("os", sample_image("1.0", extra=(kargs_d(**{"10.toml": 'kargs = ["a"]'}),)))
    install_ok(target, stream.ref("os"))
    assert image_options(target) == ["a"]
    stream.add_image("os", sample_image("1.1", extra=(kargs_d(**{"10.toml": 'kargs = ["b"]'}),)))
    ok(bootc("upgrade", sysroot=target))
    assert image_options(target) == ["b"]


@pytest.mark.parametrize("name", sorted(BAD_KARGS))
def test_a_bad_karg_is_refused_before_install_writes_anything(
    layout: OciLayout, target: Path, name: str
) -> None:
    karg, why = BAD_KARGS[name]
    proc = bootc(
        "install", "to-filesystem", "--source-imgref", layout.ref("v1"),
        "--karg", "fine=1", "--karg", karg, str(target),
    )  # fmt: skip
    assert one_error_line(proc) == f"error: Invalid kernel argument {karg!r} from --karg: {why}"
    assert list(target.iterdir()) == []


def test_a_bad_karg_is_refused_before_install_to_disk_touches_the_disk(
    layout: OciLayout, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1 << 20))
    before = disk.read_bytes()
    proc = bootc(
        "install", "to-disk", "--via-loopback", "--source-imgref", layout.ref("v1"),
        "--karg", "a=b\ninitrd /evil", str(disk),
    )  # fmt: skip
    assert one_error_line(proc) == (
        f"error: Invalid kernel argument 'a=b\\ninitrd /evil' from --karg: {CONTROL} (U+000A)"
    )
    assert disk.read_bytes() == before


@pytest.mark.parametrize("backend", ["ostree", "container"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_an_image_with_a_bad_kargs_file_is_refused_and_changes_nothing(
    layout: OciLayout, target: Path, name: str, backend: str
) -> None:
    install_ok(target, layout.ref("v1"), backend=backend)
    before = state(target)
    proc = switch_oci(target, layout, f"bad-{name}")
    line = one_error_line(proc)
    assert "usr/lib/bootc/kargs.d/50-bad.toml" in line and BAD_FILES[name][1] in line
    assert state(target) == before


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_install_and_upgrade_refuse_an_image_with_a_bad_kargs_file(
    tmp_path: Path, target: Path, backend: str
) -> None:
    text, why = BAD_FILES["newline"]
    bad = kargs_d(**{"50-bad.toml": text})
    stream = OciLayout(tmp_path / "stream")
    stream.add_image("os", sample_image("1.0", extra=(bad,)))
    line = one_error_line(install(target, stream.ref("os"), backend=backend))
    assert "usr/lib/bootc/kargs.d/50-bad.toml" in line and why in line, line
    assert list(target.iterdir()) == []
    # A good build is installed; the next one brings the bad file, and upgrade refuses it.
    stream.add_image("os", sample_image("1.0"))
    install_ok(target, stream.ref("os"), backend=backend)
    before = state(target)
    stream.add_image("os", sample_image("1.1", extra=(bad,)))
    line = one_error_line(bootc("upgrade", sysroot=target))
    assert "usr/lib/bootc/kargs.d/50-bad.toml" in line and why in line, line
    assert state(target) == before
