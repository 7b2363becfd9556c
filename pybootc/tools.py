"""The one place that starts external programs (skopeo, podman, ostree, ...).

Every command is logged as `+ argv` at debug level, reads /dev/null unless told
otherwise, and a failure becomes one BootcError that names the program and the
reason it gave, so callers never see CalledProcessError.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from pybootc.errors import BootcError

log = logging.getLogger(__name__)

Argv = Sequence[str | Path]

# Go programs (skopeo, podman) log their fatal error as `level=fatal msg="..."`.
_GO_FATAL = re.compile(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"')
# A Go program that crashed says why on the line its runtime starts with, before the
# goroutines' stacks: the last line is then only a stack frame.
_GO_PANIC = re.compile(r"^(?:panic|fatal error): .+$", re.MULTILINE)


# The escapes of Go's strconv.Quote, which logrus uses for msg="...".
_GO_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", re.S)
_GO_SIMPLE_ESCAPES = {
    b"a": b"\a", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v",
}  # fmt: skip


def _go_unquote(quoted: str) -> str:
    """The text Go quoted: its UTF-8 kept as it is, its escapes undone."""

    def one(found: re.Match[bytes]) -> bytes:
        escape = found[1]
        if escape[:1] == b"x":
            return bytes([int(escape[1:], 16)])
        if escape[:1] in (b"u", b"U"):
            code = int(escape[1:], 16)
            # Go quotes valid code points only; anything else stays as it was written.
            return chr(code).encode(errors="surrogatepass") if code <= 0x10FFFF else found[0]
        if len(escape) == 3:
            return bytes([int(escape, 8) & 0xFF])
        return _GO_SIMPLE_ESCAPES.get(escape, escape)

    return _GO_ESCAPE.sub(one, quoted.encode()).decode(errors="replace")


def _argv(cmd: Argv) -> list[str]:
    return [os.fspath(a) for a in cmd]


def failure_reason(stderr: str) -> str:
    """Reduce a tool's stderr to the one line that says what went wrong."""
    found = _GO_FATAL.findall(stderr)
    if found:
        return _go_unquote(str(found[-1]))
    crashed = _GO_PANIC.search(stderr)
    if crashed:
        return crashed.group(0).strip()
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return last.removeprefix("Error: ").removeprefix("error: ")


def _describe(cmd: list[str], returncode: int, stderr: str) -> BootcError:
    name = Path(cmd[0]).name
    if returncode == 127:
        return BootcError(f"{name} not found")
    if returncode < 0:
        return BootcError(f"{name} killed by {signal.Signals(-returncode).name}")
    reason = failure_reason(stderr) or f"exited with status {returncode}"
    return BootcError(f"{name}: {reason}")


def run(
    cmd: Argv,
    *,
    input: bytes | None = None,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run `cmd` to completion; raise BootcError if it fails and `check` is set."""
    argv = _argv(cmd)
    log.debug("+ %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
            pass_fds=pass_fds,
            check=False,
        )
    except FileNotFoundError:
        raise BootcError(f"{Path(argv[0]).name} not found") from None
    if check and proc.returncode != 0:
        raise _describe(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def run_passthrough(cmd: Argv, *, env: Mapping[str, str] | None = None) -> int:
    """Run `cmd` on the user's own terminal and hand back its exit status."""
    argv = _argv(cmd)
    log.debug("+ %s", shlex.join(argv))
    try:
        return subprocess.run(
            argv, env=None if env is None else {**os.environ, **env}, check=False
        ).returncode
    except FileNotFoundError:
        raise BootcError(f"{Path(argv[0]).name} not found") from None


def spawn(
    cmd: Argv,
    *,
    pass_fds: Sequence[int] = (),
    stdout: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start a long-lived helper (such as skopeo's image proxy) and return it."""
    argv = _argv(cmd)
    log.debug("+ %s &", shlex.join(argv))
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
        )
    except FileNotFoundError:
        raise BootcError(f"{Path(argv[0]).name} not found") from None


def reap(proc: subprocess.Popen[bytes], cmd: Argv) -> None:
    """Wait for a spawned helper and raise BootcError if it failed."""
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    returncode = proc.wait()
    if returncode != 0:
        raise _describe(_argv(cmd), returncode, stderr)
