"""Where a test runs skopeo and pybootc: this host, or a Debian 13 tree when this host's
tools cannot do what the test needs.

Debian 12's skopeo 1.9.3 has sigstore disabled ("Debian-local change: sigstore disabled"),
so on such a host the sigstore tests run in a chroot of the boot tests' cached trixie
base tree (skopeo 1.18, libostree, podman, Python and pybootc's dependencies), with this
checkout bind-mounted read-only at its own path. The chroot shares the host's network:
the loopback registry is the same one.

Paths given to `run` and `bootc` are the ones the commands see; `outside` maps them to
the host's view, where the test reads the sysroot back.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What passes from the test's environment into a chroot's `env -i`.
PASSED_ENV = ("CONTAINERS_POLICY_JSON",)
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_scratch = itertools.count()


@dataclass(frozen=True)
class Toolbox:
    """This host (root `/`), or a chroot at `root`."""

    root: Path
    name: str

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    def outside(self, inside: Path) -> Path:
        return self.root / inside.relative_to("/")

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        extra = dict(env or {})
        if self.is_host:
            command = [str(a) for a in argv]
            full_env: dict[str, str] | None = {**os.environ, **extra}
        else:
            passed = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
            settings = {
                "PATH": CHROOT_PATH,
                "HOME": "/root",
                "LANG": "C.UTF-8",
                "PYTHONPATH": str(REPO),
                # The checkout is read-only in here, and its .pyc files are the host's.
                "PYTHONDONTWRITEBYTECODE": "1",
                **passed,
                **extra,
            }
            assignments = [f"{k}={v}" for k, v in settings.items()]
            command = ["chroot", str(self.root), "env", "-i", *assignments, *map(str, argv)]
            full_env = None
        return subprocess.run(command, env=full_env, capture_output=True, text=True, check=check)

    def bootc(self, *args: str, sysroot: Path | None = None) -> subprocess.CompletedProcess[str]:
        python = sys.executable if self.is_host else "python3"
        prefix = ["--sysroot", str(sysroot)] if sysroot is not None else []
        return self.run([python, "-m", "pybootc", *prefix, *args], check=False)

    def state(self, sysroot: Path) -> str:
        """tests.backend_support.state of `sysroot`, read by this toolbox's own libostree
        and podman: another podman may not read its storage (podman 5 records its
        network backend there)."""
        from tests.backend_support import state

        if self.is_host:
            return repr(state(sysroot)) + "\n"
        code = (
            "import sys; from pathlib import Path; from tests.backend_support import state; "
            "print(repr(state(Path(sys.argv[1]))))"
        )
        return self.run(["python3", "-c", code, sysroot]).stdout

    @contextmanager
    def tmpfs(self, size: str = "512m") -> Iterator[Path]:
        """A fresh tmpfs of its own, as the commands see it: for sysroots and work files."""
        base = Path(tempfile.gettempdir()) if self.is_host else Path("/srv")
        inside = base / f"pybootc-toolbox-{os.getpid()}-{next(_scratch)}"
        with _tmpfs(self.outside(inside), size):
            yield inside


def _mount(*args: str | Path) -> None:
    subprocess.run(["mount", *map(str, args)], check=True)


@contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A private tmpfs at `where`; unmounting it, with everything below, is the cleanup:
    nothing is deleted file by file, so a bind mount below can never be walked into."""
    where.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"mode=0755,size={size}", "pybootc-toolbox", where)
    try:
        # Private: mounts made below it, and their unmounting, never reach the host's.
        _mount("--make-rprivate", where)
        yield where
    finally:
        subprocess.run(["umount", "--recursive", "--lazy", where], check=True)
        where.rmdir()


@contextmanager
def debian_chroot(release: str) -> Iterator[Toolbox]:
    """A chroot of the cached `release` base tree on a tmpfs, for the duration."""
    from tests.boot.guest_image import base_layer

    layer = base_layer(release)
    with ExitStack() as stack:
        root = stack.enter_context(
            _tmpfs(Path(tempfile.mkdtemp(prefix=f"pybootc-{release}-root-", dir="/var/tmp")), "3g")
        )
        subprocess.run(["tar", "-xzf", layer, "-C", root], check=True)
        _mount("-t", "proc", "proc", root / "proc")
        _mount("-t", "sysfs", "sysfs", root / "sys")
        # devtmpfs has the nodes podman and libostree open (null, fuse, loop-control).
        _mount("-t", "devtmpfs", "devtmpfs", root / "dev")
        for path in ("run", "tmp"):
            _mount("-t", "tmpfs", "-o", "mode=1777" if path == "tmp" else "mode=0755", path,
                   root / path)  # fmt: skip
        (root / REPO.relative_to("/")).mkdir(parents=True, exist_ok=True)
        _mount("--bind", REPO, root / REPO.relative_to("/"))
        _mount("-o", "remount,bind,ro", root / REPO.relative_to("/"))
        yield Toolbox(root, f"Debian {release} chroot")


def host_signs_sigstore() -> bool:
    """Whether this host's skopeo makes sigstore keys (Debian 12's has it disabled)."""
    with tempfile.TemporaryDirectory() as temp:
        passphrase = Path(temp, "passphrase")
        passphrase.write_text("")
        proc = subprocess.run(
            ["skopeo", "generate-sigstore-key", "--output-prefix", f"{temp}/probe",
             "--passphrase-file", passphrase],
            capture_output=True,
            check=False,
        )  # fmt: skip
        return proc.returncode == 0 and Path(temp, "probe.pub").is_file()


@contextmanager
def sigstore_toolbox() -> Iterator[Toolbox]:
    """This host if its skopeo does sigstore, else a Debian 13 chroot whose skopeo does."""
    if host_signs_sigstore():
        yield Toolbox(Path("/"), "this host")
        return
    with debian_chroot("trixie") as toolbox:
        yield toolbox
