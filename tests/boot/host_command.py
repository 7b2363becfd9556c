"""The one place the boot-test tooling starts host programs: bounded, logged, clear on failure.

Every call has a timeout, because a hung mount, mkfs or qemu must fail the test, not the run.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Argv = Sequence[str | os.PathLike[str]]


class BootTestError(Exception):
    """A failure of the boot-test tooling; the message says what failed and what was seen."""


def describe(argv: Argv) -> str:
    return shlex.join(os.fspath(arg) for arg in argv)


def run(
    argv: Argv,
    *,
    timeout: float,
    capture: bool = False,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion; a non-zero exit or a timeout raises BootTestError."""
    command = [os.fspath(arg) for arg in argv]
    log.debug("+ %s", describe(command))
    try:
        proc = subprocess.run(
            command,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=capture,
            text=True,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as err:
        raise BootTestError(f"{command[0]} not found: {describe(command)}") from err
    except subprocess.TimeoutExpired as err:
        raise BootTestError(f"timed out after {timeout:.0f} s: {describe(command)}") from err
    if proc.returncode != 0:
        raise BootTestError(f"{_reason(proc.returncode)}: {describe(command)}{_tail(proc)}")
    return proc


def _reason(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    text = "\n".join(part for part in (proc.stdout, proc.stderr) if part)
    lines = text.strip().splitlines()[-30:]
    return ("\n" + "\n".join(lines)) if lines else ""
