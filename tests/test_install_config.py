"""The install configuration (`bootc/install/*.toml`), merged as upstream merges it,
printed by `install print-configuration` and applied by `install`: its kargs after the
root ones, its stateroot, its karg-deletes. The command-line tests put the files in
/run/bootc/install inside a mount namespace of their own (a tmpfs on /run there), so the
machine's own configuration is never read or touched."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pybootc.commands.install_config import config_files, merged_configuration
from pybootc.errors import BootcError
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import ok, one_error_line

NO_CONFIGURATION = (
    '{"block":null,"boot-mount-spec":null,"bootloader":null,"bootupd":null,'
    '"discoverable-partitions":null,"enforce-container-sigpolicy":null,"filesystem":null,'
    '"match-architectures":null,"ostree":null,"root-fs-type":null,"root-mount-spec":null,'
    '"stateroot":null}'
)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_files_merge_in_upstream_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "usr/lib/bootc/install/00-base.toml", '[install]\nroot-fs-type = "btrfs"\n')
    # The same name in a later base replaces the file: btrfs is never seen.
    write(tmp_path, "run/bootc/install/00-base.toml", '[install]\nkargs = ["a"]\n')
    write(
        tmp_path,
        "usr/lib/bootc/install/10-fs.toml",
        '[install.filesystem.root]\ntype = "xfs"\n'
        '[install.ostree]\nbls-append-except-default = "x"\n',
    )
    write(tmp_path, "etc/bootc/install/20-more.toml", '[install]\nkargs = ["b"]\nstateroot = "s"\n')
    write(
        tmp_path,
        "usr/local/lib/bootc/install/30-s390x.toml",
        '[install]\nkargs = ["never"]\nmatch-architectures = ["s390x"]\n',
    )
    write(tmp_path, "etc/bootc/install/40-last.toml", '[install]\nstateroot = "t"\nfoo = 1\n')
    write(tmp_path, "etc/bootc/install/README", "not toml, not read")
    assert [p.name for p in config_files(tmp_path)] == [
        "00-base.toml", "10-fs.toml", "20-more.toml", "30-s390x.toml", "40-last.toml",
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        merged = merged_configuration(config_files(tmp_path))
    assert merged == {
        "kargs": ["a", "b"],  # added up, in file order
        "filesystem": {"root": {"type": "xfs"}},
        "root-fs-type": "xfs",  # the table's spelling, copied
        "ostree": {"bls-append-except-default": "x"},
        "stateroot": "t",  # the last file's
        "block": ["direct"],
    }
    assert f'"{tmp_path}/etc/bootc/install/40-last.toml": Unknown key foo' in caplog.text


def test_no_files_or_no_install_table_is_no_configuration(tmp_path: Path) -> None:
    assert merged_configuration(config_files(tmp_path)) is None
    write(tmp_path, "etc/bootc/install/00.toml", "[other]\nx = 1\n")
    assert merged_configuration(config_files(tmp_path)) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[install\n", "Parsing "),
        ('[install]\nkargs = "a"\n', "'kargs' must be a list of strings"),
        ('[install]\nfilesystem = "xfs"\n', "'filesystem' must be a table"),
    ],
)
def test_a_bad_file_is_refused_with_its_name(tmp_path: Path, text: str, why: str) -> None:
    write(tmp_path, "etc/bootc/install/00.toml", text)
    with pytest.raises(BootcError) as refused:
        merged_configuration(config_files(tmp_path))
    assert str(tmp_path / "etc/bootc/install/00.toml") in str(refused.value)
    assert why in str(refused.value)


def bootc_configured(config: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """bootc ARGS with `config` (file name: text) as /run/bootc/install."""
    script = (
        "mount -t tmpfs tmpfs /run && mkdir -p /run/bootc/install && cd /run/bootc/install"
        ' && while [ "$1" != -- ]; do printf %s "$2" > "$1"; shift 2; done && shift'
        ' && exec "$@"'
    )
    files = [item for name, text in config.items() for item in (name, text)]
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *files, "--", sys.executable, "-m", "pybootc", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.root  # a mount namespace of its own
def test_print_configuration_prints_canonical_json() -> None:
    assert ok(bootc_configured({}, "install", "print-configuration")) == NO_CONFIGURATION
    config = {"00.toml": '[install]\nroot-fs-type = "xfs"\nkargs = ["quiet"]\n'}
    printed = ok(bootc_configured(config, "install", "print-configuration"))
    assert printed == (
        '{"block":["direct"],"boot-mount-spec":null,"bootloader":null,"bootupd":null,'
        '"discoverable-partitions":null,"enforce-container-sigpolicy":null,'
        '"filesystem":{"root":{"type":"xfs"}},"match-architectures":null,"ostree":null,'
        '"root-fs-type":"xfs","root-mount-spec":null,"stateroot":null}'
    )
    everything = json.loads(ok(bootc_configured(config, "install", "print-configuration", "--all")))
    assert everything["kargs"] == ["quiet"]


def test_install_applies_the_configuration(tmp_path: Path, target: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", sample_image("1.0"))
    config = {
        "10.toml": '[install]\nkargs = ["console=ttyS0", "quiet", "mitigations=auto"]\n'
        'stateroot = "fedora"\n',
        "20.toml": '[install]\nkarg-deletes = ["quiet"]\n',
    }
    ok(bootc_configured(
        config, "install", "to-filesystem", "--source-imgref", layout.ref("os"),
        "--karg", "by-hand=1", str(target),
    ))  # fmt: skip
    (deployment,) = Sysroot.open(target).deployments()
    assert deployment.stateroot == "fedora"
    assert [k for k in deployment.kargs if not k.startswith("ostree=")] == [
        "console=ttyS0", "mitigations=auto", "by-hand=1",
    ]  # fmt: skip


def test_install_refuses_a_bad_karg_in_the_configuration(tmp_path: Path, target: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", sample_image("1.0"))
    config = {"10.toml": '[install]\nkargs = ["a=b\\ninitrd /evil"]\n'}
    proc = bootc_configured(
        config, "install", "to-filesystem", "--source-imgref", layout.ref("os"), str(target)
    )
    assert one_error_line(proc) == (
        "error: Invalid kernel argument 'a=b\\ninitrd /evil' from the install configuration:"
        " it holds a control character or non-UTF-8 byte (U+000A)"
    )
    assert list(target.iterdir()) == []
