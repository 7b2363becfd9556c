"""`bootc completion`: the bash script completes verbs, nested verbs and options."""

from __future__ import annotations

import subprocess
import sys

import pytest


def script(shell: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pybootc", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def complete(words: list[str]) -> list[str]:
    program = (
        script("bash")
        + f"COMP_WORDS=({' '.join(words)} '')\nCOMP_CWORD={len(words)}\n"
        + "_bootc\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_bash_completes_verbs_subverbs_and_options() -> None:
    assert {"status", "switch", "upgrade", "rollback", "edit", "image"} <= set(complete(["bootc"]))
    assert set(complete(["bootc", "image"])) >= {"list", "prune", "copy-to-storage"}
    assert "--retain" in complete(["bootc", "--sysroot", "/mnt", "switch"])


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_get_a_script_naming_every_verb(shell: str) -> None:
    text = script(shell)
    for verb in ("status", "switch", "upgrade", "rollback", "edit", "install", "internals"):
        assert verb in text
