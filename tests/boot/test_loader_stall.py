"""A kernel that hangs before /init is booted again, once; nothing else is (no real qemu:
a stand-in on PATH writes what a console shows to the `-serial file:` path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.boot.loader import (
    BootEntry,
    BootFailed,
    BootResult,
    KernelHung,
    run_qemu_again_if_hung,
)

HANGS = (
    "echo '[    1.08] hpet0: 3 comparators, 64-bit 100.000000 MHz counter' >> \"$log\"\n"
    "exec sleep 60\n"
)
BOOTS = (
    "printf '[    4.05] Run /init as init process\\nPYBOOTC-AGENT: start (uptime 9.0)\\n"
    'PYBOOTC-AGENT: rc=0 (uptime 9.5)\\n\' >> "$log"\n'
)
# Past /init, a quiet console is the guest at work, not a hang: only the timeout ends it.
QUIET_AFTER_INIT = "echo '[    4.05] Run /init as init process' >> \"$log\"\nexec sleep 60\n"


def stand_in_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *runs: str) -> Path:
    """A qemu-system-x86_64 that does runs[N] on its Nth start (the last one after that),
    and counts its starts in the file it returns."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    starts = tmp_path / "starts"
    cases = "".join(
        f"  {n}) {run.replace(chr(10), chr(10) + '    ')};;\n" for n, run in enumerate(runs)
    )
    (bin_dir / "qemu-system-x86_64").write_text(
        "#!/bin/sh\n"
        'for arg; do case "$arg" in file:*) log=${arg#file:};; esac; done\n'
        f"n=$(cat {starts} 2>/dev/null || echo 0)\n"
        f"echo $((n + 1)) > {starts}\n"
        f'[ "$n" -ge {len(runs)} ] && n={len(runs) - 1}\n'
        f'case "$n" in\n{cases}esac\n'
    )
    (bin_dir / "qemu-system-x86_64").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return starts


def boot(tmp_path: Path, timeout: float = 30) -> BootResult:
    log = tmp_path / "console.log"
    argv = ["qemu-system-x86_64", "-serial", f"file:{log}"]
    return run_qemu_again_if_hung(argv, BootEntry("ostree-1.conf"), log, timeout, stall_seconds=1)


def test_a_kernel_that_hangs_before_init_is_booted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = stand_in_qemu(tmp_path, monkeypatch, HANGS, BOOTS)
    result = boot(tmp_path)
    assert starts.read_text().strip() == "2"
    assert result.agent_rc == 0 and result.agent_started == 9.0


def test_a_kernel_that_hangs_twice_fails_the_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = stand_in_qemu(tmp_path, monkeypatch, HANGS)
    with pytest.raises(KernelHung) as hung:
        boot(tmp_path)
    assert starts.read_text().strip() == "2"
    assert "the kernel printed nothing for 1 s before /init" in str(hung.value)
    assert "hpet0: 3 comparators" in str(hung.value)


def test_a_quiet_guest_past_init_is_no_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = stand_in_qemu(tmp_path, monkeypatch, QUIET_AFTER_INIT, BOOTS)
    with pytest.raises(BootFailed) as failed:
        boot(tmp_path, timeout=4)
    assert not isinstance(failed.value, KernelHung)
    assert "timed out after 4 s" in str(failed.value)
    assert starts.read_text().strip() == "1"
