"""`bootc container lint`: upstream's checks of a root that is to become a bootc image,
with their names, kinds and messages; `--fatal-warnings`, `--skip`, `--list` and
`--no-truncate` as upstream has them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.backend_support import bootc, ok, one_error_line

LINT_NAMES = [
    "var-run", "buildah-injected", "etc-usretc", "bootc-kargs", "kernel", "utf8",
    "api-base-directories", "baseimage-composefs", "baseimage-root", "var-log",
    "var-tmpfiles", "sysusers", "nonempty-boot", "nonempty-run-tmp",
]  # fmt: skip


def good_root(root: Path) -> Path:
    """A root every lint passes."""
    for name in ("dev", "proc", "sys", "run", "tmp", "var", "boot", "sysroot", "etc"):
        (root / name).mkdir(parents=True)
    (root / "ostree").symlink_to("sysroot/ostree")
    (root / "usr/lib/modules/6.1.0").mkdir(parents=True)
    (root / "usr/lib/modules/6.1.0/vmlinuz").write_bytes(b"kernel")
    (root / "usr/lib/ostree").mkdir()
    (root / "usr/lib/ostree/prepare-root.conf").write_text("[composefs]\nenabled = yes\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsvc:x:9:9::/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nsvc:x:9:\n")
    (root / "usr/lib/sysusers.d").mkdir()
    (root / "usr/lib/sysusers.d/svc.conf").write_text("u svc 9 - /\n")
    (root / "var/lib/svc").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d").mkdir()
    (root / "usr/lib/tmpfiles.d/svc.conf").write_text(
        "d /var/lib 0755 - - -\nd /var/lib/svc\nL /var/run - - - - ../run\n"
    )
    return root


def lint(root: Path, *args: str) -> tuple[int, str, str]:
    proc = bootc("container", "lint", "--rootfs", str(root), *args)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_good_root_passes_every_lint(tmp_path: Path) -> None:
    assert lint(good_root(tmp_path / "root")) == (0, "Checks passed: 14\n", "")


def _write(path: str, data: bytes = b"x") -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)

    return change


def _mkdir(path: str) -> Callable[[Path], None]:
    return lambda root: (root / path).mkdir(parents=True)


def _remove(path: str) -> Callable[[Path], None]:
    return lambda root: os.rmdir(root / path) if (root / path).is_dir() else (root / path).unlink()


FATAL = {
    "var-run": (_mkdir("var/run"), "Not a symlink: var/run"),
    "etc-usretc": (
        _mkdir("usr/etc"),
        "Found /usr/etc - this is a bootc implementation detail and not supported to use in"
        " containers",
    ),
    "kernel": (
        lambda root: (root / "usr/lib/modules/6.1.0/vmlinuz").unlink(),
        "No kernel found: usr/lib/modules/$kver/vmlinuz is missing",
    ),
    "utf8": (_write("usr/share/caf\udce9"), "/usr/share: Found non-utf8 filename b'caf\\xe9'"),
    "api-base-directories": (_remove("proc"), "Missing API filesystem base directory: /proc"),
    "baseimage-root": (_remove("sysroot"), "Missing /sysroot"),
}


@pytest.mark.parametrize("name", sorted(FATAL))
def test_a_fatal_lint_fails_the_command(tmp_path: Path, name: str) -> None:
    root = good_root(tmp_path / "root")
    change, message = FATAL[name]
    change(root)
    rc, out, err = lint(root)
    assert rc == 1
    assert out == f"Failed lint: {name}: {message}\nChecks passed: 13\n"
    assert err == "error: Linting: Checks failed: 1\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _write("usr/lib/modules/6.2.0/vmlinuz"),
            "Unexpected runtime error running lint kernel: Found multiple subdirectories in"
            " usr/lib/modules",
        ),
        (
            _write("usr/lib/bootc/kargs.d/10-bad.toml", b"kargs = [\n"),
            "Unexpected runtime error running lint bootc-kargs: Parsing"
            " usr/lib/bootc/kargs.d/10-bad.toml: ",
        ),
    ],
)
def test_a_lint_that_cannot_run_is_one_error(
    tmp_path: Path, change: Callable[[Path], None], message: str
) -> None:
    root = good_root(tmp_path / "root")
    change(root)
    proc = bootc("container", "lint", "--rootfs", str(root))
    assert one_error_line(proc).startswith(f"error: {message}")


WARNINGS = {
    "buildah-injected": (
        _write("etc/resolv.conf", b""),
        "/etc/resolv.conf is an empty file; this may have been synthesized by a container runtime.",
    ),
    "baseimage-composefs": (
        _write("usr/lib/ostree/prepare-root.conf", b"[composefs]\nenabled = no\n"),
        "ostree/prepare-root.conf does not have composefs enabled",
    ),
    "var-log": (
        _write("var/log/dpkg.log", b"installed"),
        "Found non-empty logfiles:\n  /var/log/dpkg.log\n",
    ),
    "var-tmpfiles": (
        _mkdir("var/cache/apt"),
        "Found content in /var missing systemd tmpfiles.d entries:\n"
        "  d /var/cache 0755 0 0 - -\n  d /var/cache/apt 0755 0 0 - -\n",
    ),
    "sysusers": (
        _write("etc/group", b"root:x:0:\nsvc:x:9:\nlost:x:10:\n"),
        "Found /etc/group entry without corresponding systemd sysusers.d:\n  lost\n",
    ),
    "nonempty-boot": (
        _write("boot/vmlinuz-6.1.0"),
        "Found non-empty /boot:\n  /boot/vmlinuz-6.1.0\n",
    ),
    "nonempty-run-tmp": (
        _write("tmp/build log"),
        "Found content in runtime-only directories (/run, /tmp):\n  '/tmp/build log'\n",
    ),
}


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_a_warning_fails_only_with_fatal_warnings(tmp_path: Path, name: str) -> None:
    root = good_root(tmp_path / "root")
    change, message = WARNINGS[name]
    change(root)
    # A file in /var/log is content var-tmpfiles reports too: one warning at a time.
    quiet = ("--skip", "var-tmpfiles") if name == "var-log" else ()
    skipped = "Checks skipped: 1\n" if quiet else ""
    passed = 13 - len(quiet) // 2
    said = f"Lint warning: {name}: {message}\nChecks passed: {passed}\n{skipped}Warnings: 1\n"
    assert lint(root, *quiet) == (0, said, "")
    assert lint(root, *quiet, "--fatal-warnings") == (
        1,
        said,
        "error: Linting: Checks failed: 1\n",
    )
    # Skipped, it is not run at all; a name that is no lint is ignored, as upstream.
    assert lint(root, *quiet, "--skip", name, "--skip", "no-such-lint") == (
        0,
        f"Checks passed: {passed}\nChecks skipped: {1 + len(quiet) // 2}\n",
        "",
    )


def test_lists_are_cut_at_five_items_unless_told(tmp_path: Path) -> None:
    root = good_root(tmp_path / "root")
    (root / "var/log").mkdir()
    for n in range(7):
        (root / f"var/log/{n}.log").write_text("x")
    _, out, _ = lint(root)
    shown = [line for line in out.splitlines() if line.startswith("  /var/log/")]
    assert len(shown) == 5 and "  ...and 2 more" in out
    _, out, _ = lint(root, "--no-truncate")
    assert len([line for line in out.splitlines() if line.startswith("  /var/log/")]) == 7


def test_list_names_every_lint_with_its_kind() -> None:
    listed = yaml.safe_load(ok(bootc("container", "lint", "--list")))
    assert [entry["name"] for entry in listed] == LINT_NAMES
    kinds = {entry["name"]: entry["type"] for entry in listed}
    assert {name for name, kind in kinds.items() if kind == "fatal"} == {
        "var-run", "etc-usretc", "bootc-kargs", "kernel", "utf8", "api-base-directories",
        "baseimage-root",
    }  # fmt: skip
    assert {e["name"]: e.get("root-type") for e in listed}["buildah-injected"] == "Alternative"
    assert all(entry["description"].endswith("\n") for entry in listed)
