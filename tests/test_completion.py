"""`bootc completion`: shell scripts that ask bootc itself (argcomplete) what fits, so
verbs, nested verbs, options, the values of choices and paths all complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def complete(line: str, tmp_path: Path) -> list[str]:
    """What bootc offers for the last word of `line`, as the shell script asks it."""
    answer = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SHELL": "bash",
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",
        # This checkout's pybootc, whatever the working directory.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    subprocess.run(
        [sys.executable, "-m", "pybootc"], env=env, cwd=tmp_path, capture_output=True, check=True
    )
    return [word.strip() for word in answer.read_text().split("\n") if word]


def test_verbs_subverbs_and_options_complete(tmp_path: Path) -> None:
    assert {"status", "switch", "upgrade", "update", "rollback", "edit", "image"} <= set(
        complete("bootc ", tmp_path)
    )
    assert {"list", "prune", "copy-to-storage"} <= set(complete("bootc image ", tmp_path))
    assert "--retain" in complete("bootc --sysroot /mnt switch --re", tmp_path)


def test_the_values_of_choices_complete_where_values_belong(tmp_path: Path) -> None:
    assert complete("bootc status --format ", tmp_path) == ["humanreadable", "yaml", "json"]
    assert complete("bootc switch --backend ", tmp_path) == ["ostree", "container"]
    assert "oci" in complete("bootc switch --transport o", tmp_path)
    assert complete("bootc image list --format ", tmp_path) == ["table", "json"]


def test_paths_complete_where_a_path_belongs(tmp_path: Path) -> None:
    (tmp_path / "layout-v1").mkdir()
    (tmp_path / "host.yaml").write_text("")
    assert complete("bootc edit -f ho", tmp_path) == ["host.yaml"]
    assert complete("bootc install to-filesystem --source-imgref x lay", tmp_path) == ["layout-v1/"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_shell_gets_a_script_that_asks_bootc(shell: str) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "pybootc", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "bootc" in script and "_ARGCOMPLETE" in script
