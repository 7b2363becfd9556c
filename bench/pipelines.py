"""What the benchmark times: pybootc's verbs, and the tool pipelines it is measured against.

Ours run as the CLI (`bootc_with_rss.py`, which adds the Python process's own peak RSS)
against a sysroot on a new scratch filesystem; what a run needs before it (an install
to update from, say) is done first, untimed. The baselines do the least that makes the
same image a deployment with the tools themselves:
- (a) `skopeo copy` into containers-storage, `podman image mount`, `ostree commit` of
  the mounted tree (with its /etc copied to /usr/etc, which `ostree admin deploy`
  needs), `ostree admin deploy`;
- (b) `umoci raw unpack`, /etc moved to /usr/etc, `ostree commit`, `ostree admin deploy`;
- the floor: the digest of each layer blob, its gunzip and the digest of its tar
  stream, which every pipeline has to do at least: with ISA-L and OpenSSL's SHA-256
  (floor_hash.py), and, as the issue measured it, with `gzip -dc | sha256sum`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from measure import Sample, run_measured
from scratchfs import FsKind, scratch_filesystem
from workloads import Workload

from pybootc import tools
from pybootc.ostree.sysroot import Sysroot
from pybootc.stores.bootc_storage import bootc_storage
from tests.support import Registry

BENCH_DIR = Path(__file__).resolve().parent
BACKENDS = ("ostree", "container")
_BLOB_GET = re.compile(r'"GET /v2/[^ ]*/blobs/(sha256:[0-9a-f]+) HTTP/[0-9.]+" (200|206) (\d+)')


def blob_bytes(registry: Registry | None, layers: set[str]) -> tuple[int, int]:
    """Requests for the blobs `layers` the registry has answered so far, and the bytes
    they carried."""
    assert registry is not None
    found = _BLOB_GET.findall(registry.log_path.read_text(errors="replace"))
    sizes = [int(size) for digest, _, size in found if digest in layers]
    return len(sizes), sum(sizes)


@dataclass(frozen=True)
class Env:
    """Where the benchmark works: the registry images are pushed to, and the directory
    its scratch filesystems are made in."""

    registry: Registry | None
    scratch: Path
    fs: FsKind = FsKind.EXT4
    size: int = 8 << 30

    def image(self, repo: str, tag: str) -> str:
        assert self.registry is not None
        return f"docker://{self.registry.address}/{repo}:{tag}"

    @contextmanager
    def filesystem(self, fs: FsKind | None = None) -> Iterator[Path]:
        with scratch_filesystem(self.scratch, fs or self.fs, self.size) as mount:
            yield mount


def bootc(*args: str | Path) -> list[str | Path]:
    return [sys.executable, BENCH_DIR / "bootc_with_rss.py", *args]


def _run(argv: list[str | Path]) -> Sample:
    return run_measured(argv)


def push(env: Env, workload: Workload, repo: str) -> None:
    """Every tag of the workload's layout to REGISTRY/repo."""
    for tag in ("v1", "v2", "other"):
        # The layout's own blobs, never another compression skopeo's blob info cache
        # knows of: the sizes the report compares with are the layout's.
        tools.run(
            ["skopeo", "copy", "--quiet", "--preserve-digests", workload.ref(tag),
             env.image(repo, tag)]
        )  # fmt: skip


def retag(env: Env, repo: str, tag: str, as_tag: str) -> None:
    """Point `as_tag` at what `tag` is: a build the host follows moving on."""
    tools.run(["skopeo", "copy", "--quiet", env.image(repo, tag), env.image(repo, as_tag)])


def reset_storage(sysroot: Path) -> None:
    storage = bootc_storage(sysroot)
    if storage.root.exists():
        storage.reset(check=False)


# --- ours -------------------------------------------------------------------------------


def install(env: Env, mount: Path, image: str, backend: str) -> Sample:
    sysroot = mount / "sysroot"
    sysroot.mkdir()
    return _run(
        bootc("install", "to-filesystem", "--backend", backend, "--source-imgref", image, sysroot)
    )


def update(env: Env, mount: Path, repo: str, backend: str, layers: set[str]) -> tuple[Sample, int]:
    """`bootc upgrade` from v1 to v2 of the tag the host follows; the bytes of the
    `layers` it fetched."""
    retag(env, repo, "v1", "stream")
    install(env, mount, env.image(repo, "stream"), backend)
    retag(env, repo, "v2", "stream")
    _, before = blob_bytes(env.registry, layers)
    sample = _run(bootc("--sysroot", mount / "sysroot", "upgrade"))
    _, after = blob_bytes(env.registry, layers)
    return sample, after - before


def switch(env: Env, mount: Path, repo: str, backend: str) -> Sample:
    """`bootc switch` from v1 to `other`: the same files in layers the host has none of."""
    install(env, mount, env.image(repo, "v1"), backend)
    return _run(bootc("--sysroot", mount / "sysroot", "switch", env.image(repo, "other")))


def check(env: Env, mount: Path, repo: str, backend: str, layers: set[str]) -> tuple[Sample, int]:
    """`bootc upgrade --check` with v2 waiting; the layer blobs it fetched (none, as
    only the manifest and the config are to be read)."""
    retag(env, repo, "v1", "stream")
    install(env, mount, env.image(repo, "stream"), backend)
    retag(env, repo, "v2", "stream")
    before, _ = blob_bytes(env.registry, layers)
    sample = _run(bootc("--sysroot", mount / "sysroot", "upgrade", "--check"))
    after, _ = blob_bytes(env.registry, layers)
    return sample, after - before


def deploy_alone(env: Env, mount: Path, repo: str) -> tuple[Sample, Sample]:
    """`ostree admin deploy` of the commit an install deployed, again: what libostree
    does in every update whatever changed (the deployment's checkout, the /etc merge,
    the boot entries), with nothing fetched or imported. Without its prune of the repo:
    pybootc prunes only when something became unreachable, in a phase of its own.

    Also one pass of GLib's SHA-256 over the deployment's kernel and initramfs, timed
    alone: libostree 2022.7 (and upstream's today) hashes them for the boot checksum as
    it checks a deployment out, and again for every deployment each time it writes new
    boot entries, as an update from one deployment to two does: three passes."""
    install(env, mount, env.image(repo, "v1"), "ostree")
    sysroot = mount / "sysroot"
    deployed = Sysroot.open(sysroot).deployments()[0]
    deploy = _run(
        [
            "ostree", "admin", "deploy", "--no-prune", f"--sysroot={sysroot}",
            "--os=default", deployed.checksum,
        ]
    )  # fmt: skip
    return deploy, kernel_hash(deployed.deployment_path)


def kernel_hash(deployment: Path) -> Sample:
    """One pass of GLib's SHA-256, as libostree reads them, over the kernel and
    initramfs in `deployment`'s usr/lib/modules."""
    from pybootc.ostree.gi import GLib

    modules = next(deployment.glob("usr/lib/modules/*/vmlinuz")).parent
    files = [modules / "vmlinuz", *(p for p in modules.glob("initramfs*") if p.is_file())]
    checksum = GLib.Checksum.new(GLib.ChecksumType.SHA256)
    start_cpu, start = time.process_time(), time.perf_counter()
    for path in files:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 16):
                checksum.update(chunk)
    checksum.get_string()
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return Sample(seconds, cpu, 0, None, "")


def status(env: Env, mount: Path, repo: str, backend: str) -> Sample:
    install(env, mount, env.image(repo, "v1"), backend)
    return _run(bootc("--sysroot", mount / "sysroot", "status", "--format", "json"))


# --- the baselines -------------------------------------------------------------------------


def _ostree_sysroot(sysroot: Path) -> None:
    sysroot.mkdir()
    tools.run(["ostree", "admin", "init-fs", "--modern", sysroot])
    tools.run(["ostree", "admin", "os-init", "default", "--sysroot", sysroot])


_COMMIT_AND_DEPLOY = """
mkdir -p "$work/extra/usr" && cp -a "$tree/etc" "$work/extra/usr/etc"
printf '/dev\n/etc\n' > "$work/skip"  # devices ostree cannot commit; /etc goes to /usr/etc
commit=$(ostree commit --repo="$sysroot/ostree/repo" --orphan --skip-list="$work/skip" \\
    --tree=dir="$tree" --tree=dir="$work/extra" --subject=bench \\
    ${policy:+--selinux-policy="$policy"})
ostree admin deploy --sysroot="$sysroot" --os=default "$commit" >/dev/null
"""


def _policy(labelled: bool) -> str:
    """The script line that has _COMMIT_AND_DEPLOY label with the tree's own policy."""
    return 'policy="$tree"\n' if labelled else "policy=\n"


def baseline_a(
    env: Env, mount: Path, image: str, *, update_from: str | None = None, labelled: bool = False
) -> Sample:
    """(a): skopeo copy into containers-storage, podman image mount, ostree commit of
    the mount, deploy. With `update_from`, that image is done first, untimed, so the
    copy reuses its layers. `labelled`: as baseline_b's."""
    sysroot = mount / "sysroot"
    _ostree_sysroot(sysroot)
    runroot = Path(tempfile.mkdtemp(prefix="bench-rr-", dir="/run"))
    storage = f"overlay@{mount / 'storage'}+{runroot}"
    podman = f"podman --root {mount / 'storage'} --runroot {runroot}"
    script = (
        "set -euo pipefail\n"
        f"sysroot={shlex.quote(str(sysroot))} work=$(mktemp -d -p {shlex.quote(str(mount))})\n"
        f'skopeo --tmpdir "$work" copy --quiet "$1" "containers-storage:[{storage}]bench:latest"\n'
        f"tree=$({podman} image mount bench:latest)\n"
        + _policy(labelled)
        + _COMMIT_AND_DEPLOY
        + f"{podman} image unmount --all >/dev/null\n"
        'rm -rf "$work"\n'
    )
    try:
        if update_from is not None:
            run_measured(["bash", "-c", script, "bash", update_from])
        return run_measured(["bash", "-c", script, "bash", image])
    finally:
        tools.run(
            ["podman", "--root", mount / "storage", "--runroot", runroot, "system", "reset", "-f"],
            check=False,
        )
        tools.run(["rm", "-rf", runroot], check=False)


def baseline_b(
    env: Env,
    mount: Path,
    workload: Workload,
    tag: str,
    *,
    update_from: str | None = None,
    labelled: bool = False,
) -> Sample:
    """(b): umoci raw unpack of the layout, /etc to /usr/etc, ostree commit, deploy.
    With `update_from` (a tag), that image is done first, untimed: the commit then
    finds the objects the repo has. `labelled`: the commit labels with the image's own
    policy (`--selinux-policy`, the commit modifier ostree-ext labels through)."""
    sysroot = mount / "sysroot"
    _ostree_sysroot(sysroot)
    script = (
        "set -euo pipefail\n"
        f"sysroot={shlex.quote(str(sysroot))} work=$(mktemp -d -p {shlex.quote(str(mount))})\n"
        'tree="$work/rootfs"\n'
        + _policy(labelled)
        + 'umoci raw unpack --image "$1" "$tree"\n'
        + _COMMIT_AND_DEPLOY
        + 'rm -rf "$work"\n'
    )
    if update_from is not None:
        run_measured(["bash", "-c", script, "bash", workload.umoci_ref(update_from)])
    return run_measured(["bash", "-c", script, "bash", workload.umoci_ref(tag)])


def _blobs(workload: Workload, tag: str) -> list[str]:
    return [str(workload.blob(str(layer["digest"]))) for layer in workload.layers(tag)]


def floor(workload: Workload, tag: str = "v1") -> Sample:
    """The digests and gunzip of the image's layer blobs, the fastest way there is here:
    what any pipeline does at least."""
    return run_measured([sys.executable, BENCH_DIR / "floor_hash.py", *_blobs(workload, tag)])


def floor_gnu(workload: Workload, tag: str = "v1") -> Sample:
    """`gzip -dc | sha256sum` of the image's layer blobs: the floor as issue 12 took it."""
    script = 'for blob in "$@"; do gzip -dc "$blob" | sha256sum >/dev/null; done'
    return run_measured(["bash", "-c", script, "bash", *_blobs(workload, tag)])


@dataclass
class FsckTally:
    """`ostree fsck` of the repo every measured run left: how many, and which failed
    (each with fsck's first line of complaint)."""

    checked: int = 0
    failed: list[str] = field(default_factory=list)


FSCK = FsckTally()


def check_repo(mount: Path, tally: FsckTally = FSCK) -> bool:
    """`ostree fsck` of the sysroot's repo under `mount`, if there is one, into `tally`;
    whether it passed."""
    repo = mount / "sysroot/ostree/repo"
    if not repo.is_dir():
        return True
    tally.checked += 1
    done = tools.run(["ostree", "fsck", "--quiet", f"--repo={repo}"], check=False)
    if done.returncode:
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        tally.failed.append(f"{repo}: {said[-1] if said else 'failed'}")
    return done.returncode == 0


def in_fresh_filesystem(
    env: Env, run: Callable[[Path], Sample], fs: FsKind | None = None, tally: FsckTally = FSCK
) -> Sample:
    """`run` on a new scratch filesystem, which goes afterwards; the repo it left is
    checked by `ostree fsck` first (not timed), into `tally`, whether it succeeded or
    not."""
    with env.filesystem(fs) as mount:
        try:
            return run(mount)
        finally:
            check_repo(mount, tally)
            reset_storage(mount / "sysroot")
            os.sync()
