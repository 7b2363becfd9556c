"""The boot tests' boot loader: reads BLS type 1 entries from a guest disk and boots one in qemu.

Entries are read afresh before every boot, so what the guest's libostree wrote decides the
next boot, as it would with a real loader. qemu runs with -no-reboot: a guest reboot ends it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.boot.disk import mounted
from tests.boot.host_command import BootTestError, describe

# Seen on the console when a boot has failed for good: stop waiting for the timeout.
FAILURE_MARKERS = (
    "Kernel panic",
    "You are in emergency mode",
    "Give root password for maintenance",
    "Cannot open access to console, the root account is locked",
    "dracut Warning: Could not boot",
    "Entering emergency mode",
)
AGENT_START = "PYBOOTC-AGENT: start"
# What the kernel prints as it hands over to the initramfs. A kernel that stops printing
# before that has hung in its own start-up under TCG (seen once, on a Debian 13 host: a
# forky kernel silent after "hpet0: 3 comparators" until the 900 s bound). Nothing of the
# guest has run then, so its disks are as they were, and that boot is made again, once.
KERNEL_HANDED_OVER = "Run /init as init process"
KERNEL_STALL_SECONDS = 180.0
_AGENT_RC = re.compile(r"PYBOOTC-AGENT: rc=(\d+)")
_AGENT_UPTIME = re.compile(r"PYBOOTC-AGENT: (start|rc=\d+) \(uptime ([0-9.]+)\)")
_TAIL_LINES = 50


@dataclass(frozen=True)
class BootEntry:
    """One `loader/entries/*.conf` file, with the keys the BLS spec defines for type 1."""

    filename: str
    title: str = ""
    version: str = ""
    linux: str = ""
    initrd: tuple[str, ...] = ()
    options: str = ""
    sort_key: str | None = None
    machine_id: str | None = None

    @property
    def stem(self) -> str:
        """The file name without `.conf` and without a boot-counting suffix (`+LEFT-DONE`)."""
        return re.sub(r"(\+\d+(-\d+)?)?\.conf$", "", self.filename)


@dataclass(frozen=True)
class BootResult:
    """What one qemu run showed: the entry booted, the console, and the agent's exit code."""

    entry: BootEntry
    console_log: Path
    seconds: float
    agent_rc: int | None
    console_tail: tuple[str, ...] = field(default=(), repr=False)
    # Guest uptimes (s) when the agent started and when its step ended, from the console.
    agent_started: float | None = None
    step_ended: float | None = None


class BootFailed(BootTestError):
    """The guest did not boot to the agent, or did not finish in time."""


class KernelHung(BootFailed):
    """The guest's kernel stopped printing before it started the initramfs."""


def parse_entry(filename: str, text: str) -> BootEntry:
    values: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value.strip())

    def one(key: str) -> str | None:
        found = values.get(key)
        return found[-1] if found else None

    return BootEntry(
        filename=filename,
        title=one("title") or "",
        version=one("version") or "",
        linux=one("linux") or "",
        initrd=tuple(values.get("initrd", [])),
        # The spec allows `options` more than once; the lines are joined.
        options=" ".join(values.get("options", [])),
        sort_key=one("sort-key"),
        machine_id=one("machine-id"),
    )


def version_compare(left: str, right: str) -> int:
    """-1, 0 or 1, by the UAPI version format's rules for the parts BLS entries use.

    Digit runs compare as numbers and letter runs alphabetically, a digit run is newer than
    a letter run, `~` is older than anything (even the end), and other characters only
    separate the runs.
    """
    a, b = _version_tokens(left), _version_tokens(right)
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x == "~" or y == "~":
            return -1 if x == "~" else 1
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else (1 if int(x) > int(y) else _cmp(x, y))
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1
        return _cmp(x, y)
    if len(a) == len(b):
        return 0
    longer, sign = (a, 1) if len(a) > len(b) else (b, -1)
    # "1~rc" is older than "1": a trailing `~` run sorts before the end of the other.
    return -sign if longer[min(len(a), len(b))] == "~" else sign


def _version_tokens(text: str) -> list[str]:
    return re.findall(r"~|\d+|[A-Za-z]+", text)


def _cmp(x: str, y: str) -> int:
    return (x > y) - (x < y)


def _entry_order(a: BootEntry, b: BootEntry) -> int:
    """The BLS spec's order: entries with a sort-key first, by (sort-key, machine-id,
    newest version); the rest, and ties, by file name, newest version first.

    libostree writes no sort-key: its `ostree-N-STATEROOT.conf` with the highest N, the
    first deployment, sorts first and is the default, as it is for systemd-boot.
    """
    if (a.sort_key is None) != (b.sort_key is None):
        return -1 if a.sort_key is not None else 1
    if a.sort_key is not None and b.sort_key is not None:
        for x, y in ((a.sort_key, b.sort_key), (a.machine_id or "", b.machine_id or "")):
            if x != y:
                return _cmp(x, y)
        by_version = version_compare(b.version, a.version)
        if by_version:
            return by_version
    return version_compare(b.stem, a.stem) or _cmp(b.filename, a.filename)


def sort_entries(entries: Sequence[BootEntry]) -> list[BootEntry]:
    return sorted(entries, key=functools.cmp_to_key(_entry_order))


def entries_in(boot_dir: Path) -> list[BootEntry]:
    """The entries under `boot_dir/loader/entries`, in boot order: the default first."""
    entries_dir = boot_dir / "loader" / "entries"
    if not entries_dir.is_dir():
        return []
    return sort_entries(
        [parse_entry(path.name, path.read_text()) for path in entries_dir.glob("*.conf")]
    )


def read_entries(disk: Path) -> list[BootEntry]:
    """The disk's boot entries in boot order; the disk is mounted read-only only meanwhile."""
    with mounted(disk) as root:
        return entries_in(_boot_dir(root))


def _boot_dir(root: Path) -> Path:
    """$BOOT: the file system's /boot when /boot is a directory on it, else its root."""
    return root / "boot" if (root / "boot" / "loader").exists() else root


def _resolve(root: Path, boot_dir: Path, path: str) -> Path:
    """An entry's path is relative to $BOOT; libostree may also write it as /boot/... ."""
    relative = path.lstrip("/")
    candidates = [boot_dir / relative]
    if relative.startswith("boot/"):
        candidates.append(root / relative)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BootTestError(f"boot entry names {path}, which is not on the disk: tried {candidates}")


@dataclass(frozen=True)
class _BootFiles:
    entry: BootEntry
    kernel: Path
    initrd: Path | None


def _copy_boot_files(disk: Path, choice: int | str, dest: Path) -> _BootFiles:
    """Pick the entry (an index in boot order, or a file name) and copy out what it boots."""
    with mounted(disk) as root:
        boot_dir = _boot_dir(root)
        entries = entries_in(boot_dir)
        if not entries:
            raise BootTestError(f"no boot entries on {disk}")
        if isinstance(choice, int):
            if choice >= len(entries):
                names = [e.filename for e in entries]
                raise BootTestError(f"no boot entry {choice} on {disk}: only {names}")
            entry = entries[choice]
        else:
            found = [e for e in entries if e.filename == choice]
            if not found:
                raise BootTestError(f"no boot entry {choice} on {disk}")
            entry = found[0]
        kernel = dest / "linux"
        shutil.copyfile(_resolve(root, boot_dir, entry.linux), kernel)
        initrd: Path | None = None
        if entry.initrd:
            # qemu takes one initrd; the kernel unpacks concatenated cpio archives in turn.
            initrd = dest / "initrd"
            with initrd.open("wb") as out:
                for part in entry.initrd:
                    with _resolve(root, boot_dir, part).open("rb") as data:
                        shutil.copyfileobj(data, out)
        return _BootFiles(entry, kernel, initrd)


def boot(
    disk: Path,
    agent_disk: Path | None,
    entry: int | str | BootEntry = 0,
    timeout: float = 600,
    *,
    extra_disks: Sequence[Path] = (),
    console_log: Path | None = None,
    extra_kargs: Sequence[str] = ("console=ttyS0",),
    memory_mb: int = 2048,
    require_agent: bool = True,
) -> BootResult:
    """Boot `entry` of `disk` (0: the default, 1: the previous one) until qemu exits.

    The guest powering off or rebooting ends qemu. A timeout, a failure marker on the
    console, or (with `require_agent`) a boot that never started the agent raises
    BootFailed with the last console lines.
    """
    choice = entry.filename if isinstance(entry, BootEntry) else entry
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybootc-boot-") as temp:
        files = _copy_boot_files(disk, choice, Path(temp))
        log = console_log or Path(temp) / "console.log"
        options = files.entry.options.split()
        options += [karg for karg in extra_kargs if karg not in options]
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            str(memory_mb),
            "-smp",
            "2",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
            "-serial",
            f"file:{log}",
            "-kernel",
            str(files.kernel),
            *(["-initrd", str(files.initrd)] if files.initrd else []),
            "-append",
            " ".join(options),
            *_drive_args([disk, *([agent_disk] if agent_disk else []), *extra_disks]),
        ]
        result = run_qemu_again_if_hung(argv, files.entry, log, timeout)
        if require_agent and AGENT_START not in log.read_text(errors="replace"):
            raise BootFailed(
                f"{files.entry.filename}: the guest stopped before the agent started"
                + _tail_text(result.console_tail)
            )
        if console_log is None:
            # The temporary directory goes; keep the log next to the disk for a post-mortem.
            kept = disk.with_name(disk.name + ".console.log")
            shutil.copyfile(log, kept)
            result = dataclasses.replace(result, console_log=kept)
        return result


def _drive_args(disks: Sequence[Path]) -> list[str]:
    args = []
    for path in disks:
        # cache=unsafe: guest flushes need not reach the host's disk; qemu's writes still
        # land in the host page cache, so a killed qemu loses nothing the host will read.
        args += ["-drive", f"file={path},format=raw,if=virtio,cache=unsafe"]
    return args


def run_qemu_again_if_hung(
    argv: list[str],
    entry: BootEntry,
    log: Path,
    timeout: float,
    stall_seconds: float = KERNEL_STALL_SECONDS,
) -> BootResult:
    """Run qemu (`_run_qemu`); if the kernel hung before the initramfs, once more."""
    try:
        return _run_qemu(argv, entry, log, timeout, stall_seconds)
    except KernelHung as hung:
        print(f"[boot] {str(hung).splitlines()[0]}; booting again", file=sys.stderr)
        return _run_qemu(argv, entry, log, timeout, stall_seconds)


def _run_qemu(
    argv: list[str], entry: BootEntry, log: Path, timeout: float, stall_seconds: float
) -> BootResult:
    log.write_text("")
    started = last_change = time.monotonic()
    size = 0
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    failure = ""
    hung = False
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                failure = f"timed out after {timeout:.0f} s"
                break
            text = log.read_text(errors="replace")
            if len(text) != size:
                size, last_change = len(text), now
            elif now - last_change > stall_seconds and KERNEL_HANDED_OVER not in text:
                failure = f"the kernel printed nothing for {stall_seconds:.0f} s before /init"
                hung = True
                break
            marker = next((m for m in FAILURE_MARKERS if m in text), None)
            if marker is not None:
                # Give the console a moment to show why, then stop: this boot is lost.
                time.sleep(3)
                failure = f"the console shows {marker!r}"
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        qemu_output = proc.communicate(timeout=30)[0].decode(errors="replace")
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    tail = tuple(text.splitlines()[-_TAIL_LINES:])
    if not failure and proc.returncode != 0:
        failure = f"qemu exited with {proc.returncode}: {qemu_output.strip()}"
    if failure:
        raise (KernelHung if hung else BootFailed)(
            f"{entry.filename} ({entry.title}): {failure}\n+ {describe(argv)}" + _tail_text(tail)
        )
    rcs = _AGENT_RC.findall(text)
    uptimes = {kind.split("=")[0]: float(value) for kind, value in _AGENT_UPTIME.findall(text)}
    return BootResult(
        entry,
        log,
        seconds,
        int(rcs[-1]) if rcs else None,
        tail,
        agent_started=uptimes.get("start"),
        step_ended=uptimes.get("rc"),
    )


def _tail_text(lines: Sequence[str]) -> str:
    return f"\nlast {len(lines)} console lines:\n" + "\n".join(lines)
