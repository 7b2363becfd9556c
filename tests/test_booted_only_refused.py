"""What only a booted host does is refused on any other sysroot, and nothing is staged.

The verbs themselves (--apply, --download-only, usr-overlay, soft reboot) are tested
in the qemu boot harness, on a host that really booted; here only the refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, ok, one_error_line, state


@pytest.fixture
def installed(target: Path, tmp_path: Path) -> tuple[Path, OciLayout]:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    layout.add_image("v2", sample_image("2.0"))
    ok(bootc("install", "to-filesystem", "--source-imgref", layout.ref("v1"), str(target)))
    return target, layout


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["switch", "--apply", "@v2"], "--apply"),
        (["switch", "--soft-reboot", "auto", "@v2"], "--soft-reboot"),
        (["upgrade", "--apply"], "--apply"),
        (["upgrade", "--download-only"], "--download-only"),
        (["upgrade", "--from-downloaded"], "--from-downloaded"),
        (["rollback", "--apply"], "--apply"),
        (["usr-overlay"], "usroverlay"),
        (["usroverlay", "--read-only"], "usroverlay"),
    ],
)
def test_booted_host_verbs_are_refused_off_a_booted_host(
    installed: tuple[Path, OciLayout], argv: list[str], flag: str
) -> None:
    sysroot, layout = installed
    argv = [layout.ref("v2") if a == "@v2" else a for a in argv]
    before = state(sysroot)
    line = one_error_line(bootc(*argv, sysroot=sysroot))
    assert line == f"error: {flag} only applies on booted hosts"
    assert state(sysroot) == before


@pytest.mark.parametrize(
    ("usr_lib", "etc", "cmdline", "enabled"),
    [
        (None, None, "ro", False),
        ("[composefs]\nenabled = yes\n", None, "ro", True),
        ("[composefs]\nenabled = signed\n", None, "ro", True),
        ("[composefs]\nenabled = verity\n", None, "ro", True),
        ("[composefs]\nenabled = maybe\n", None, "ro", False),
        ("[composefs]\nenabled = yes\n", "[composefs]\nenabled = no\n", "ro", False),
        ("[composefs]\nenabled = yes\n", "[sysroot]\nreadonly = true\n", "ro", False),
        (None, "[composefs]\nenabled = true\n", "ro", True),
        ("[composefs]\nenabled = yes\n", None, "ro ostree.prepare-root.composefs=0", False),
        (None, None, "ostree.prepare-root.composefs=1 quiet", True),
    ],
)
def test_soft_reboot_needs_a_deployment_that_composefs_mounts(
    tmp_path: Path, usr_lib: str | None, etc: str | None, cmdline: str, enabled: bool
) -> None:
    """As ostree-prepare-root reads it; /etc's file replaces /usr/lib's whole."""
    from pybootc.commands.booted import composefs_enabled

    for name, text in (("usr/lib", usr_lib), ("etc", etc)):
        if text is not None:
            path = tmp_path / name / "ostree/prepare-root.conf"
            path.parent.mkdir(parents=True)
            path.write_text(text)
    assert composefs_enabled(tmp_path, cmdline) is enabled
