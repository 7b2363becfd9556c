"""`bootc container lint`: upstream's checks of a root filesystem that is to become a
bootc image, with its names, kinds and messages.

A fatal lint that fails fails the command; a warning only counts with
`--fatal-warnings`. Some lints apply only to the running root (`--rootfs /`) or only
to another one, as upstream has them. pybootc's `kernel` lint also fails an image with
no kernel, which pybootc refuses to deploy; upstream lets that pass.
"""

from __future__ import annotations

import enum
import os
import shlex
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError
from pybootc.layers import tmpfiles
from pybootc.ostree.kargs import KARGS_D, host_architecture, image_kargs

# As upstream: a list in a message shows this many items, unless --no-truncate.
_SHOWN_ITEMS = 5
_API_DIRECTORIES = ("dev", "proc", "sys", "run", "tmp", "var")
_BASEIMAGE = Path("usr/share/doc/bootc/baseimage/base")
_PREPARE_ROOT = "ostree/prepare-root.conf"


class LintType(enum.StrEnum):
    FATAL = "fatal"
    WARNING = "warning"


class RootType(enum.StrEnum):
    """Which root a lint applies to; upstream's names."""

    RUNNING = "Running"
    ALTERNATIVE = "Alternative"


class LintFailed(Exception):
    """What a lint found wrong: the message it prints."""


@dataclass(frozen=True)
class Lint:
    name: str
    type: LintType
    description: str
    check: Callable[[Path, int | None], None]
    root_type: RootType | None = None


def _quoted(path: str) -> str:
    """A path as upstream shows it: shell-quoted unless every character is plain."""
    plain = all(c.isalnum() or c in "/.-_,=:" for c in path)
    return path if plain else shlex.quote(path)


def _items(header: str, items: Sequence[str], limit: int | None) -> LintFailed:
    shown = list(items) if limit is None else list(items)[:limit]
    lines = [f"{header}:", *(f"  {item}" for item in shown)]
    if len(items) > len(shown):
        lines.append(f"  ...and {len(items) - len(shown)} more")
    return LintFailed("\n".join(lines) + "\n")


def _var_run(root: Path, limit: int | None) -> None:
    path = root / "var/run"
    if path.exists() and not path.is_symlink():
        raise LintFailed("Not a symlink: var/run")


def _buildah_injected(root: Path, limit: int | None) -> None:
    for name in ("etc/hostname", "etc/resolv.conf"):
        path = root / name
        if path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
            raise LintFailed(
                f"/{name} is an empty file; this may have been synthesized by a container runtime."
            )


def _etc_usretc(root: Path, limit: int | None) -> None:
    if (root / "etc").exists() and (root / "usr/etc").exists():
        raise LintFailed(
            "Found /usr/etc - this is a bootc implementation detail and not supported to use"
            " in containers"
        )


def _kargs(root: Path, limit: int | None) -> None:
    directory = root / KARGS_D
    if not directory.is_dir():
        return
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    image_kargs(files, host_architecture())


def _kernel(root: Path, limit: int | None) -> None:
    modules = root / "usr/lib/modules"
    kernels = sorted(d.name for d in modules.glob("*") if (d / "vmlinuz").is_file())
    if len(kernels) > 1:
        raise BootcError("Found multiple subdirectories in usr/lib/modules")
    if not kernels:
        raise LintFailed("No kernel found: usr/lib/modules/$kver/vmlinuz is missing")


def _walk_one_device(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    device = root.lstat().st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        # Not into other filesystems, as upstream's walk: /proc, /sys, mounts.
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == device]
        yield dirpath, dirnames, filenames


def _utf8(root: Path, limit: int | None) -> None:
    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    for dirpath, dirnames, filenames in _walk_one_device(root):
        relative = "/" + os.path.relpath(dirpath, root).removeprefix(".")
        for name in (*dirnames, *filenames):
            if bad(name):
                raise LintFailed(f"{relative}: Found non-utf8 filename {os.fsencode(name)!r}")
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and bad(os.readlink(path)):
                raise LintFailed(f"{os.path.join(relative, name)}: Found non-utf8 symlink target")


def _api_base_directories(root: Path, limit: int | None) -> None:
    for name in _API_DIRECTORIES:
        path = root / name
        if not path.exists() and not path.is_symlink():
            raise LintFailed(f"Missing API filesystem base directory: /{name}")
        if path.is_symlink() or not path.is_dir():
            raise LintFailed(f"Expected directory for API filesystem base directory: /{name}")


def _composefs_enabled(config: Path) -> bool | None:
    """Whether prepare-root.conf enables composefs (or a transient root); None if absent."""
    if not config.is_file():
        return None
    text = config.read_text(errors="replace")
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        enabled = value.lower() in ("yes", "true", "1", "maybe", "signed", "verity")
        if (section, key) in (("composefs", "enabled"), ("root", "transient")) and enabled:
            return True
    return False


def _baseimage_composefs(root: Path, limit: int | None) -> None:
    for base in (root, *([root / _BASEIMAGE] if (root / _BASEIMAGE).is_dir() else [])):
        found = [
            _composefs_enabled(base / d / "ostree/prepare-root.conf") for d in ("etc", "usr/lib")
        ]
        if all(f is None for f in found):
            raise LintFailed("ostree/prepare-root.conf is not present to enable composefs")
        if not any(found):
            raise LintFailed("ostree/prepare-root.conf does not have composefs enabled")


def _baseimage_root(root: Path, limit: int | None) -> None:
    for base in (root, *([root / _BASEIMAGE] if (root / _BASEIMAGE).is_dir() else [])):
        sysroot, ostree = base / "sysroot", base / "ostree"
        if not sysroot.exists() and not sysroot.is_symlink():
            raise LintFailed("Missing /sysroot")
        if sysroot.is_symlink() or not sysroot.is_dir():
            raise LintFailed("Expected a directory for /sysroot")
        if not ostree.exists() and not ostree.is_symlink():
            raise LintFailed("Missing ostree -> sysroot/ostree link")
        if not ostree.is_symlink():
            raise LintFailed("/ostree should be a symlink")
        link = os.readlink(ostree)
        if link != "sysroot/ostree":
            raise LintFailed(f"Expected /ostree -> sysroot/ostree, not {link!r}")


def _var_log(root: Path, limit: int | None) -> None:
    found = []
    for dirpath, _, names in os.walk(root / "var/log"):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                found.append(_quoted("/" + os.path.relpath(os.path.join(dirpath, name), root)))
    if found:
        raise _items("Found non-empty logfiles", sorted(found), limit)


def _var_tmpfiles(root: Path, limit: int | None) -> None:
    declared = tmpfiles.declared_paths(root)
    missing: list[str] = []
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / "var"):
        dirnames.sort()
        for name in sorted((*dirnames, *filenames)):
            path = os.path.join(dirpath, name)
            shown = "/" + os.path.relpath(path, root)
            if shown in declared:
                continue
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
                missing.append(tmpfiles.line(shown, st, link=link, copy_from=None))
            else:
                files.append(_quoted(shown))
    if missing:
        raise _items("Found content in /var missing systemd tmpfiles.d entries", missing, limit)
    if files:
        raise _items("Found non-directory/non-symlink files in /var", files, limit)


def _names_in(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line.split(":", 1)[0] for line in lines if line and not line.startswith("#")]


def _sysusers_names(root: Path) -> tuple[set[str], set[str]]:
    """Users and groups that sysusers.d creates."""
    users: set[str] = set()
    groups: set[str] = set()
    for base in ("usr/lib/sysusers.d", "etc/sysusers.d", "run/sysusers.d"):
        for conf in sorted((root / base).glob("*.conf")):
            for line in conf.read_text(errors="replace").splitlines():
                fields = line.split()
                if len(fields) < 2 or fields[0].startswith("#"):
                    continue
                if fields[0] in ("u", "u!"):
                    users.add(fields[1])
                    groups.add(fields[1])
                elif fields[0] == "g":
                    groups.add(fields[1])
    return users, groups


def _sysusers(root: Path, limit: int | None) -> None:
    users, groups = _sysusers_names(root)
    # root is made by systemd itself.
    users |= {"root"}
    groups |= {"root"}
    lost_users = [n for n in _names_in(root / "etc/passwd") if n not in users]
    lost_groups = [n for n in _names_in(root / "etc/group") if n not in groups]
    if lost_users:
        raise _items(
            "Found /etc/passwd entry without corresponding systemd sysusers.d", lost_users, limit
        )
    if lost_groups:
        raise _items(
            "Found /etc/group entry without corresponding systemd sysusers.d", lost_groups, limit
        )


def _nonempty_boot(root: Path, limit: int | None) -> None:
    boot = root / "boot"
    if not boot.is_dir():
        raise LintFailed("Missing /boot directory")
    found = sorted(f"/boot/{name}" for name in os.listdir(boot) if name != "EFI")
    if found:
        raise _items("Found non-empty /boot", [_quoted(f) for f in found], limit)


def _nonempty_run_tmp(root: Path, limit: int | None) -> None:
    found = []
    for top in ("run", "tmp"):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in _walk_one_device(base):
            for name in (*dirnames, *filenames):
                shown = "/" + os.path.relpath(os.path.join(dirpath, name), root)
                if shown in ("/run/systemd", "/run/systemd/resolve"):
                    continue  # the parents of the stub resolv.conf, if that is all
                if shown != "/run/systemd/resolve/stub-resolv.conf":
                    found.append(shown)
    if found:
        raise _items(
            "Found content in runtime-only directories (/run, /tmp)",
            [_quoted(f) for f in sorted(found)],
            limit,
        )


LINTS = (
    Lint("var-run", LintType.FATAL,
         "Check for /var/run being a physical directory; this is always a bug.\n", _var_run),
    Lint("buildah-injected", LintType.WARNING,
         "Check for an empty /etc/hostname or /etc/resolv.conf, which a container runtime\n"
         "may have made.\n", _buildah_injected, RootType.ALTERNATIVE),
    Lint("etc-usretc", LintType.FATAL,
         "Verify that only one of /etc or /usr/etc exist. You should only have /etc\n"
         "in a container image. It will cause undefined behavior to have both /etc\n"
         "and /usr/etc.\n", _etc_usretc),
    Lint("bootc-kargs", LintType.FATAL, "Verify syntax of /usr/lib/bootc/kargs.d.\n", _kargs),
    Lint("kernel", LintType.FATAL,
         "Check for multiple kernels, i.e. multiple directories of the form\n"
         "/usr/lib/modules/$kver. Only one kernel is supported in an image, and pybootc\n"
         "needs one.\n", _kernel),
    Lint("utf8", LintType.FATAL,
         "Check for filenames and symlink targets that are not UTF-8.\n", _utf8),
    Lint("api-base-directories", LintType.FATAL,
         "Verify that the API filesystem base directories (/dev /proc /sys /run /tmp /var)\n"
         "exist and are directories.\n", _api_base_directories),
    Lint("baseimage-composefs", LintType.WARNING,
         "Check that ostree/prepare-root.conf enables composefs.\n", _baseimage_composefs),
    Lint("baseimage-root", LintType.FATAL,
         "Check that /sysroot is a directory and /ostree a symlink to sysroot/ostree, as\n"
         "bootc base images have them.\n", _baseimage_root),
    Lint("var-log", LintType.WARNING,
         "Check for non-empty log files in /var/log, which the image would carry to every\n"
         "host only at install.\n", _var_log),
    Lint("var-tmpfiles", LintType.WARNING,
         "Check for content in /var that no systemd tmpfiles.d entry recreates.\n",
         _var_tmpfiles),
    Lint("sysusers", LintType.WARNING,
         "Check for /etc/passwd and /etc/group entries that no systemd sysusers.d entry\n"
         "creates.\n", _sysusers),
    Lint("nonempty-boot", LintType.WARNING,
         "The /boot directory should be present and empty; the kernel belongs in\n"
         "/usr/lib/modules/$kver.\n", _nonempty_boot),
    Lint("nonempty-run-tmp", LintType.WARNING,
         "Check for content in /run and /tmp, which are runtime-only.\n", _nonempty_run_tmp),
)  # fmt: skip


def list_lints() -> str:
    """`--list`: every lint as YAML, as upstream prints it."""
    import yaml

    entries = []
    for lint in LINTS:
        entry: dict[str, str] = {
            "name": lint.name,
            "type": lint.type.value,
            "description": lint.description,
        }
        if lint.root_type is not None:
            entry["root-type"] = lint.root_type.value
        entries.append(entry)

    class _Dumper(yaml.SafeDumper):
        """Descriptions span lines: as literal blocks, the way serde_yaml writes them."""

    def block(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    _Dumper.add_representer(str, block)
    return str(yaml.dump(entries, Dumper=_Dumper, sort_keys=False, allow_unicode=True))


def lint(
    root: Path,
    *,
    fatal_warnings: bool = False,
    skip: Sequence[str] = (),
    truncate: bool = True,
    print_line: Callable[[str], None] = print,
) -> None:
    """Run the lints on `root`, printing what each finds; a BootcError if any failed."""
    if not root.is_dir():
        raise BootcError(f"{root} is not a directory")
    root_type = RootType.RUNNING if str(root) == "/" else RootType.ALTERNATIVE
    limit = _SHOWN_ITEMS if truncate else None
    passed = skipped = warnings = failed = 0
    for lint_ in sorted(LINTS, key=lambda x: (x.name == "utf8", x.name)):
        if lint_.name in skip or lint_.root_type not in (None, root_type):
            skipped += 1
            continue
        try:
            lint_.check(root, limit)
        except LintFailed as found:
            if lint_.type is LintType.FATAL:
                print_line(f"Failed lint: {lint_.name}: {found}")
                failed += 1
            else:
                print_line(f"Lint warning: {lint_.name}: {found}")
                warnings += 1
                failed += fatal_warnings
            continue
        except (BootcError, OSError) as err:
            raise BootcError(f"Unexpected runtime error running lint {lint_.name}: {err}") from None
        passed += 1
    print_line(f"Checks passed: {passed}")
    if skipped:
        print_line(f"Checks skipped: {skipped}")
    if warnings:
        print_line(f"Warnings: {warnings}")
    if failed:
        raise BootcError(f"Checks failed: {failed}", context=("Linting",))
