"""bootc's storage in the field: it works from any mount path, and cleanup after a
deployment is written never turns a good deployment into a failed command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pybootc.host.model import Host
from pybootc.sample.image import sample_image
from pybootc.stores.bootc_storage import STORAGE_SUBDIR, bootc_storage
from tests.backend_support import bootc, install, ok, publish
from tests.support import Registry

pytestmark = pytest.mark.registry


def files_naming(root: Path, needle: bytes) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink() and path.is_file() and needle in path.read_bytes():
                found.append(path)
    return found


def test_storage_made_at_one_path_works_from_another(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    v1 = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/moved", tag="v1")
    v2 = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/moved", tag="v2")
    ok(install(target, v1.docker))
    ok(bootc("internals", "podman", "images", sysroot=target))
    storage = target / STORAGE_SUBDIR
    assert storage.is_dir()
    assert files_naming(storage, str(target).encode()) == []

    # As the booted host sees it: the same disk, mounted somewhere else.
    moved = target.with_name("booted")
    target.rename(moved)
    try:
        images = ok(bootc("internals", "podman", "images", "--format", "{{.Tag}}", sysroot=moved))
        assert images.split() == ["v1"]
        ok(bootc("switch", v2.docker, sysroot=moved))
        host = Host.from_json(ok(bootc("status", "--format", "json", sysroot=moved)))
        assert host.status.staged and host.status.staged.image
        assert host.status.staged.image.version == "2.0"
        assert "v2" in ok(bootc("image", "list", sysroot=moved))
    finally:
        bootc_storage(moved).reset(check=False)
        shutil.rmtree(bootc_storage(moved).runroot, ignore_errors=True)
        moved.rename(target)


def test_a_cleanup_failure_after_deploying_is_a_warning(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    v1 = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/tidy", tag="v1")
    v2 = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/tidy", tag="v2")
    v3 = publish(registry, tmp_path, sample_image("3.0"), repo="pybootc/tidy", tag="v3")
    ok(install(target, v1.docker))
    storage = bootc_storage(target)
    # The top layer only v1 has, made undeletable: GC of v1 must fail.
    (name,) = ok(
        bootc(
            "internals", "podman", "images", "--format", "{{.Repository}}:{{.Tag}}", sysroot=target
        )
    ).split()
    top = storage.image_layers(name)[-1].diff_dir
    subprocess.run(["chattr", "+i", top], check=True)
    try:
        # A third deployment drops the v1 one (rollback keeps one), and so its image.
        ok(bootc("switch", v2.docker, sysroot=target))
        proc = bootc("switch", v3.docker, sysroot=target)
    finally:
        subprocess.run(["chattr", "-i", top], check=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Queued for next boot:")
    assert "error" not in proc.stderr
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: Cleaning up after the deployment: podman:"
    ), proc.stderr
    host = Host.from_json(ok(bootc("status", "--format", "json", sysroot=target)))
    assert host.status.staged and host.status.staged.image
    assert host.status.staged.image.version == "3.0"


def test_runroots_of_storages_that_are_gone_are_removed(tmp_path: Path) -> None:
    from pybootc.stores.containers_storage import (
        RUNROOTS,
        ContainersStorage,
        _remove_orphan_runroots,
    )

    # The sweep runs once per process; this process may have run it already.
    _remove_orphan_runroots.cache_clear()

    def orphan(name: str, age: float) -> Path:
        runroot = RUNROOTS / f"test-{name}-{os.getpid()}"
        runroot.mkdir(parents=True)
        conf = runroot / "storage.conf"
        conf.write_text(f'[storage]\ngraphroot = "{tmp_path / name}"\n')
        os.utime(conf, (time.time() - age, time.time() - age))
        return runroot

    old, young = orphan("gone-long-ago", 3600), orphan("being-made", 5)
    kept = orphan("still-there", 3600)
    (tmp_path / "still-there").mkdir()
    try:
        ContainersStorage.at(tmp_path / "any")
        assert not old.exists()
        assert young.exists() and kept.exists()
    finally:
        for path in (old, young, kept):
            shutil.rmtree(path, ignore_errors=True)
