"""The command line's own surface: --version, the `update` alias, and `status` on a
host that bootc does not manage, as upstream prints them."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pybootc.cli import build_parser
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, install, ok, one_error_line
from tests.support import UPSTREAM_FIXTURE_DIR


def test_version_is_printed_as_bootc_prints_it() -> None:
    assert re.fullmatch(r"bootc \d+\.\d+\.\d+\n", ok(bootc("--version")))


def test_update_is_upgrade(target: Path, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    ok(install(target, layout.ref("v1")))
    checked = ok(bootc("upgrade", "--check", sysroot=target))
    assert checked == f"No changes in: ostree-unverified-image:{layout.ref('v1')}\n"
    assert ok(bootc("update", "--check", sysroot=target)) == checked
    assert ok(bootc("update", sysroot=target)) == "No update available.\n"


def test_status_on_a_host_bootc_does_not_manage(tmp_path: Path) -> None:
    human = ok(bootc("status", "--format", "humanreadable", sysroot=tmp_path))
    assert human == "System is not deployed via bootc.\n"
    upstream = json.loads((UPSTREAM_FIXTURE_DIR / "spec-v1-null.json").read_text())
    assert json.loads(ok(bootc("status", "--format", "json", sysroot=tmp_path))) == upstream
    assert ok(bootc("status", "--format", "yaml", sysroot=tmp_path)) == (
        "apiVersion: org.containers.bootc/v1\nkind: BootcHost\nmetadata:\n  name: host\n"
        "spec:\n  image: null\n  bootOrder: default\nstatus:\n  staged: null\n"
        "  booted: null\n  rollback: null\n  rollbackQueued: false\n  type: null\n"
    )
    assert list(tmp_path.iterdir()) == []
    missing = tmp_path / "missing"
    assert one_error_line(bootc("status", sysroot=missing)) == f"error: {missing} does not exist"


def _verbs(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _verbs(child, (*path, name))
    return found


def test_every_option_has_help_and_every_verb_ends_with_an_example() -> None:
    for path, parser in _verbs(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, (path, action.option_strings or action.dest)
        text = parser.format_help()
        example = text.rstrip().rsplit("\nexample:\n", 1)
        assert len(example) == 2, (path, text)
        assert all(line.startswith("  bootc ") for line in example[1].splitlines()), path


def test_switch_help_ends_as_written() -> None:
    assert ok(bootc("switch", "--help")).endswith(
        "example:\n  bootc switch quay.io/example/os:latest\n"
        "  bootc switch --transport oci /srv/layout:v2\n"
    )
