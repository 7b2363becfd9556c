"""Hostile input never gets a traceback: non-UTF-8 bytes in arguments, files and stdin, a
reader that is gone, a closed stdout, a missing editor. Each command gives one `error:`
line (exit 1), or stops quietly (exit 0, or 141 when stdout's reader has gone, as a tool
that SIGPIPE ends)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import ok, state

BAD = b"\xff\xfe-not-utf8"
READER_GONE = 128 + 13  # SIGPIPE


def run(
    *args: bytes | str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    stdout: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    argv: list[str | bytes] = [
        sys.executable,
        "-m",
        "pybootc",
        *(a if isinstance(a, bytes) else a.encode() for a in args),
    ]
    return subprocess.run(
        argv,
        input=stdin,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_one_line_or_quiet(proc: subprocess.CompletedProcess[bytes], *, exit: int) -> str:
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert proc.returncode == exit, (proc.returncode, err)
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    if exit == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]
    assert lines == [], err
    return ""


@pytest.fixture
def installed(target: Path, tmp_path: Path) -> Path:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    ok(
        subprocess.run(
            [sys.executable, "-m", "pybootc", "install", "to-filesystem",
             "--source-imgref", layout.ref("v1"), str(target)],
            capture_output=True, text=True, check=False,
        )
    )  # fmt: skip
    return target


def reader_gone() -> int:
    """A pipe whose reading end is closed already: every write to it fails (EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--format", "json"],
        ["status", "--format", "yaml"],
        ["status", "--format", "humanreadable", "-v"],
        ["image", "list"],
        ["image", "list", "--format", "json"],
        ["completion", "bash"],
    ],
)
def test_a_reader_that_went_away_stops_the_command_quietly(
    installed: Path, argv: list[str]
) -> None:
    pipe = reader_gone()
    try:
        proc = run("--sysroot", str(installed), *argv, stdout=pipe)
    finally:
        os.close(pipe)
    assert_one_line_or_quiet(proc, exit=READER_GONE)


def test_a_closed_stdout_is_no_traceback(installed: Path) -> None:
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "pybootc",
         "--sysroot", str(installed), "status", "--format", "json"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert_one_line_or_quiet(proc, exit=0)


def assert_refused(proc: subprocess.CompletedProcess[bytes], argv: list[str]) -> None:
    if argv[0] != "state":
        line = assert_one_line_or_quiet(proc, exit=1)
        assert line == "error: Invalid host document: document: expected an object, found null"
        return
    # The question has no newline of its own: the error ends its line.
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.endswith(" [y/N] error: Not confirmed: the deployments are kept\n"), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["edit", "-f", "-"], ["state", "wipe-ostree"]])
def test_a_closed_stdin_is_one_error_line_and_changes_nothing(
    installed: Path, argv: list[str]
) -> None:
    before = state(installed)
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "pybootc",
         "--sysroot", str(installed), *argv],
        capture_output=True, check=False,
    )  # fmt: skip
    assert_refused(proc, argv)
    assert state(installed) == before


def test_an_answer_that_is_not_utf8_is_no_yes(installed: Path) -> None:
    before = state(installed)
    # Strict decoding, as a UTF-8 locale other than C.UTF-8 gives Python's stdin.
    proc = run(
        "--sysroot", str(installed), "state", "wipe-ostree",
        stdin=BAD + b"\n", env={"PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    assert_refused(proc, ["state", "wipe-ostree"])
    assert state(installed) == before


def test_a_file_or_stdin_that_is_not_utf8_is_one_error_line(
    installed: Path, tmp_path: Path
) -> None:
    before = state(installed)
    document = tmp_path / "host.yaml"
    document.write_bytes(b"spec:\n  image:\n    image: " + BAD + b"\n")
    line = assert_one_line_or_quiet(
        run("--sysroot", str(installed), "edit", "-f", str(document)), exit=1
    )
    assert line == f"error: Reading {document}: not UTF-8 text (byte 0xff at offset 26)"
    line = assert_one_line_or_quiet(
        run("--sysroot", str(installed), "edit", "-f", "-", stdin=document.read_bytes()), exit=1
    )
    assert line == "error: Reading stdin: not UTF-8 text (byte 0xff at offset 26)"
    assert state(installed) == before


def test_yaml_that_does_not_parse_is_one_error_line(installed: Path, tmp_path: Path) -> None:
    document = tmp_path / "host.yaml"
    document.write_text("spec:\n  image: [unclosed\n  bootOrder: default\n")
    before = state(installed)
    line = assert_one_line_or_quiet(
        run("--sysroot", str(installed), "edit", "-f", str(document)), exit=1
    )
    assert line.startswith("error: Invalid host document: ") and " at line " in line, line
    assert state(installed) == before


def test_a_document_nested_too_deep_is_one_error_line(installed: Path, tmp_path: Path) -> None:
    # PyYAML and Python's JSON parser recurse into nested collections.
    document = tmp_path / "host.yaml"
    for text in ("[" * 5000, '{"spec":' * 5000):
        document.write_text(text)
        before = state(installed)
        line = assert_one_line_or_quiet(
            run("--sysroot", str(installed), "edit", "-f", str(document)), exit=1
        )
        assert line == "error: Invalid host document: it nests too deeply"
        assert state(installed) == before


def test_a_missing_editor_is_named(installed: Path) -> None:
    env = {"EDITOR": "/nonexistent/editor --wait"}
    before = state(installed)
    line = assert_one_line_or_quiet(run("--sysroot", str(installed), "edit", env=env), exit=1)
    assert line == "error: The editor '/nonexistent/editor --wait' ($EDITOR) was not found"
    assert state(installed) == before


@pytest.mark.parametrize(
    "argv",
    [
        [b"switch", BAD],
        [b"switch", b"--transport", b"oci", b"/nonexistent/" + BAD],
        [b"switch", b"--transport", BAD, b"x"],
        [b"install", b"to-filesystem", b"--source-imgref", b"oci:/nonexistent/" + BAD, b"/" + BAD],
        [b"install", b"to-filesystem", b"--karg", BAD, b"--source-imgref", b"oci:/x:y", b"/" + BAD],
        [b"image", b"copy-to-storage", b"--source", BAD],
        [b"internals", b"flatten", BAD, b"--output", b"/nonexistent/" + BAD],
    ],
)
def test_arguments_that_are_not_utf8_get_one_error_line(installed: Path, argv: list[bytes]) -> None:
    before = state(installed)
    proc = run(b"--sysroot", str(installed).encode(), *argv)
    if proc.returncode == 2:
        # argparse's own refusal of a choice: its usage and one error line, no traceback.
        assert b"Traceback" not in proc.stderr and proc.stderr.splitlines()[-1].startswith(b"bootc")
    else:
        assert_one_line_or_quiet(proc, exit=1)
    assert state(installed) == before


def test_a_sysroot_path_that_is_not_utf8_is_one_error_line() -> None:
    line = assert_one_line_or_quiet(run(b"--sysroot", b"/nonexistent/" + BAD, b"status"), exit=1)
    assert line == r"error: /nonexistent/\udcff\udcfe-not-utf8 does not exist"
