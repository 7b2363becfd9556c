"""`bootc edit`: a new spec.image switches, a flipped spec.bootOrder rolls back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pybootc.commands.edit import BACKUP_EDITORS, editor_command
from pybootc.errors import BootcError
from pybootc.sample.image import sample_image
from tests.backend_support import bootc, install, ok, one_error_line, publish, state
from tests.support import Registry

pytestmark = pytest.mark.registry


def edited(target: Path, tmp_path: Path, change: dict[str, object]) -> Path:
    document = yaml.safe_load(ok(bootc("status", "--format", "yaml", sysroot=target)))
    document["spec"].update(change)
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_edit_switches_rolls_back_and_refuses(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    one = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/edit", tag="one")
    two = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/edit", tag="two")
    ok(install(target, one.docker))

    unchanged = edited(target, tmp_path, {})
    assert (
        ok(bootc("edit", "-f", str(unchanged), sysroot=target))
        == "Edit cancelled, no changes made.\n"
    )

    image = {"image": two.ref, "transport": "registry", "signature": "insecure"}
    out = ok(bootc("edit", "-f", str(edited(target, tmp_path, {"image": image})), sysroot=target))
    assert out.startswith(f"Queued for next boot: {two.ref}")

    before = state(target)
    both = edited(target, tmp_path, {"image": {**image, "image": one.ref}, "bootOrder": "rollback"})
    assert one_error_line(bootc("edit", "-f", str(both), sysroot=target)) == (
        "error: Invalid state transition: rollback and image change"
    )
    assert state(target) == before
    no_image = edited(target, tmp_path, {"image": None})
    line = one_error_line(bootc("edit", "-f", str(no_image), sysroot=target))
    assert line == "error: Missing image in specification"
    assert state(target) == before

    ok(
        bootc(
            "edit", "-f", str(edited(target, tmp_path, {"bootOrder": "rollback"})), sysroot=target
        )
    )
    status = yaml.safe_load(ok(bootc("status", "--format", "yaml", sysroot=target)))
    assert status["status"]["staged"]["image"]["version"] == "1.0"


def test_edit_in_the_editor(registry: Registry, target: Path, tmp_path: Path) -> None:
    one = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/edit-ed", tag="one")
    two = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/edit-ed", tag="two")
    ok(install(target, one.docker))
    # An "editor" that retags the image in the spec.
    env = {**os.environ, "EDITOR": "sed -i s/edit-ed:one/edit-ed:two/"}
    proc = subprocess.run(
        [sys.executable, "-m", "pybootc", "--sysroot", str(target), "edit"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Queued for next boot: {two.ref}\n")


def test_the_editor_is_chosen_as_upstream_chooses(tmp_path: Path) -> None:
    """$EDITOR (its words), else the first of nano, vim and vi in /usr/bin (a
    directory of the test's here); $VISUAL is not read, as upstream does not."""
    assert editor_command({"EDITOR": "sed -i s/a/b/", "VISUAL": "vim"}) == [
        "sed", "-i", "s/a/b/",
    ]  # fmt: skip
    for name in ("vi", "vim"):
        (tmp_path / name).touch()
    assert editor_command({"VISUAL": "sed"}, tmp_path) == [str(tmp_path / "vim")]
    (tmp_path / "nano").touch()
    assert editor_command({"EDITOR": ""}, tmp_path) == [str(tmp_path / "nano")]
    for name in BACKUP_EDITORS:
        (tmp_path / name).unlink()
    with pytest.raises(BootcError, match=r"^\$EDITOR is unset, and no backup editor found$"):
        editor_command({}, tmp_path)
