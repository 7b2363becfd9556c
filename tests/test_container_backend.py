"""The container backend end to end, against the loopback registry.

install, switch, upgrade, upgrade --check, rollback and status across image
versions; --retain; podman passthrough; GC. Every command is the real CLI.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pybootc.host.model import Host
from pybootc.sample.image import sample_image
from pybootc.stores.containers_storage import ContainersStorage
from tests.backend_support import Published, bootc, install, ok, publish, state
from tests.support import Registry
from tests.sysroot_support import lock_held_elsewhere

pytestmark = pytest.mark.registry


def install_ok(target: Path, image: Published, *extra: str) -> str:
    return ok(install(target, image.docker, *extra))


def host(target: Path) -> Host:
    return Host.from_json(ok(bootc("status", "--format", "json", sysroot=target)))


def test_install_switch_upgrade_rollback(registry: Registry, target: Path, tmp_path: Path) -> None:
    v1 = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/life", tag="v1")
    v2 = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/life", tag="v2")

    out = install_ok(target, v1, "--karg", "console=ttyS0")
    assert out.splitlines()[0] == f"Queued for next boot: {v1.ref}"
    assert "  Version: 1.0" in out and re.search(r"  Digest: sha256:[0-9a-f]{64}", out)
    first = host(target)
    assert first.status.booted is None and first.status.staged is not None
    assert first.status.staged.image is not None and first.status.staged.image.version == "1.0"
    assert first.status.staged.store == "containerStorage"
    entries = list((target / "boot/loader/entries").glob("*.conf"))
    assert len(entries) == 1 and "console=ttyS0" in entries[0].read_text()

    out = ok(bootc("switch", v2.docker, sysroot=target))
    assert out.startswith(f"Queued for next boot: {v2.ref}")
    second = host(target)
    assert second.status.staged and second.status.staged.image
    assert second.status.staged.image.version == "2.0"
    assert second.status.rollback and second.status.rollback.image
    assert second.status.rollback.image.version == "1.0"
    assert second.spec.image is not None and second.spec.image.image == v2.ref
    # Kernel arguments carry over from the deployment the new one merges from.
    assert all(
        "console=ttyS0" in p.read_text() for p in (target / "boot/loader/entries").glob("*.conf")
    )

    assert ok(bootc("switch", v2.docker, sysroot=target)) == "Image specification is unchanged.\n"
    assert ok(bootc("upgrade", sysroot=target)) == (
        f"No changes in {v2.ref} => {v2.manifest_digest}\nNo update available.\n"
    )

    publish(registry, tmp_path, sample_image("3.0"), repo="pybootc/life", tag="v2")
    out = ok(bootc("upgrade", sysroot=target))
    assert "Version: 3.0" in out
    # Upstream's layer diff against what runs: 2.0 and 3.0 differ in one layer.
    assert out.splitlines()[3:] == [
        line for line in out.splitlines() if line.startswith(("Total new", "Removed", "Added"))
    ]
    assert re.search(r"^Added layers: +1  +Size: ", out, re.MULTILINE), out
    third = host(target)
    assert (
        third.status.staged
        and third.status.staged.image
        and third.status.staged.image.version == "3.0"
    )
    assert third.status.rollback and third.status.rollback.image
    assert third.status.rollback.image.version == "2.0"

    assert ok(bootc("rollback", sysroot=target))
    rolled = host(target)
    assert (
        rolled.status.staged
        and rolled.status.staged.image
        and rolled.status.staged.image.version == "2.0"
    )
    ok(bootc("rollback", sysroot=target))
    again = host(target)
    assert (
        again.status.staged
        and again.status.staged.image
        and again.status.staged.image.version == "3.0"
    )

    human = ok(bootc("status", "--format", "humanreadable", sysroot=target))
    assert "  Staged image: " in human and "  Rollback image: " in human and "Version: 3.0" in human
    assert (
        yaml.safe_load(ok(bootc("status", "--format", "yaml", sysroot=target)))["kind"]
        == "BootcHost"
    )


def test_upgrade_check_fetches_only_manifest_and_config(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    v1 = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/check", tag="latest")
    install_ok(target, v1)
    assert ok(bootc("upgrade", "--check", sysroot=target)) == f"No changes in: docker://{v1.ref}\n"
    # Nothing new is nothing to keep, as ostree-ext caches only an update.
    assert (staged := host(target).status.staged) and staged.cached_update is None

    newer = publish(registry, tmp_path, sample_image("1.1"), repo="pybootc/check", tag="latest")
    manifest = newer.manifest()
    before = len(registry.requests())
    out = ok(bootc("upgrade", "--check", sysroot=target))
    assert out.startswith(f"Update available for: docker://{v1.ref}")
    assert "Version: 1.1" in out and "Total new layers: " in out
    seen = registry.requests()[before:]
    layer_digests = {layer["digest"] for layer in manifest["layers"]}
    assert any("/manifests/" in r for r in seen)
    assert not [r for r in seen if any(d in r for d in layer_digests)], seen

    status = host(target)
    assert status.status.staged and status.status.staged.cached_update
    assert status.status.staged.cached_update.version == "1.1"
    human = ok(bootc("status", "--format", "humanreadable", sysroot=target))
    assert "UpdateVersion: 1.1" in human
    summary = json.loads(ok(bootc("upgrade", "--check", "--format", "json", sysroot=target)))
    assert summary["updateAvailable"] is True and summary["version"] == "1.1"


def test_retain_keeps_the_old_images_ref(registry: Registry, target: Path, tmp_path: Path) -> None:
    a = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/keep-a")
    b = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/keep-b")
    c = publish(registry, tmp_path, sample_image("3.0"), repo="pybootc/keep-c")
    install_ok(target, a)

    def image_refs() -> list[str]:
        return [ref for ref, _ in state(target).refs if ref.startswith("ostree/container/image/")]

    ok(bootc("switch", "--retain", b.docker, sysroot=target))
    assert len(image_refs()) == 2
    ok(bootc("switch", c.docker, sysroot=target))
    refs = image_refs()
    assert len(refs) == 2 and not any("keep-b" in ref.replace("_2D_", "-") for ref in refs)


def test_transport_option_and_podman_passthrough(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    a = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/pass")
    install_ok(target, a)
    b = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/pass", tag="two")
    # `docker`, upstream's other name for the registry transport.
    ok(bootc("switch", "--transport", "docker", b.ref, sysroot=target))
    images = ok(
        bootc(
            "internals", "podman", "images", "--format", "{{.Repository}}:{{.Tag}}", sysroot=target
        )
    )
    assert f"{registry.address}/pybootc/pass:two" in images.split()
    # podman's own options come through too, before its command as after it.
    tags = bootc(
        "internals", "podman", "--log-level=error", "images", "--format", "{{.Tag}}", sysroot=target
    )
    assert "two" in ok(tags).split()
    alias = bootc("internal-podman", "image", "exists", "no/such:image", sysroot=target)
    assert alias.returncode == 1  # podman's own exit status comes through
    listing = json.loads(ok(bootc("image", "list", "--format", "json", sysroot=target)))
    assert {"image_type": "host", "image": f"docker://{b.ref}"} in listing
    assert {"image_type": "unified", "image": b.ref} in listing


def test_gc_removes_only_images_no_deployment_uses(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    images = [
        publish(registry, tmp_path, sample_image(f"{n}.0"), repo=f"pybootc/gc{n}")
        for n in (1, 2, 3)
    ]
    install_ok(target, images[0])
    ok(bootc("switch", images[1].docker, sysroot=target))
    assert len(state(target).images) == 2
    # A third deployment pushes the first one out (rollback keeps one), and its image goes.
    ok(bootc("switch", images[2].docker, sysroot=target))
    assert len(state(target).deployments) == 2
    remaining = ok(
        bootc("internals", "podman", "images", "--format", "{{.Repository}}", sysroot=target)
    ).split()
    assert sorted(remaining) == sorted(f"{registry.address}/pybootc/gc{n}" for n in (2, 3))
    assert ok(bootc("image", "prune", sysroot=target)) == "No unused images.\n"


def test_images_move_between_bootc_and_host_storage(
    registry: Registry, target: Path, tmp_path: Path, host_storage: ContainersStorage
) -> None:
    import subprocess

    from pybootc.layers.listing import list_tree
    from pybootc.stores.bootc_storage import bootc_storage

    os_image = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/move")
    install_ok(target, os_image)
    ok(bootc("image", "copy-to-storage", sysroot=target))
    host = host_storage
    mine = bootc_storage(target)
    name = f"{registry.address}/pybootc/move:latest"
    # Complete: the same tree through the kernel's overlay from both stores.
    copied, original = host.mount("localhost/bootc"), mine.mount(name)
    try:
        assert list_tree(copied) == list_tree(original)
    finally:
        host.unmount("localhost/bootc")
        mine.unmount(name)

    # podman image prune on the host never touches the OS image in bootc's storage.
    subprocess.run(
        ["podman", "image", "prune", "--all", "--force"], check=True, capture_output=True
    )
    subprocess.run(["podman", "rmi", "--all", "--force"], check=True, capture_output=True)
    assert name in ok(
        bootc(
            "internals", "podman", "images", "--format", "{{.Repository}}:{{.Tag}}", sysroot=target
        )
    )

    extra = publish(registry, tmp_path, sample_image("9.9"), repo="pybootc/extra")
    subprocess.run(
        [
            "skopeo",
            "--tmpdir",
            str(tmp_path),
            "copy",
            "--quiet",
            extra.docker,
            "containers-storage:localhost/extra:1",
        ],
        check=True,
    )
    ok(bootc("image", "pull-from-default-storage", "localhost/extra:1", sysroot=target))
    assert "localhost/extra:1" in ok(bootc("image", "list", sysroot=target))
    pruned = ok(bootc("image", "prune", sysroot=target))
    assert pruned.startswith("Removed sha256:")
    assert "localhost/extra" not in ok(bootc("image", "list", sysroot=target))
    assert name in ok(bootc("image", "list", sysroot=target))


def test_image_prune_waits_for_the_sysroot_lock(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    image = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/prune-lock")
    ok(install(target, image.docker, backend="container"))
    argv = [sys.executable, "-m", "pybootc", "--sysroot", str(target), "image", "prune"]
    with lock_held_elsewhere(target):
        pruning = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert pruning.stderr is not None
        ready, _, _ = select.select([pruning.stderr], [], [], 60)
        assert ready, "image prune neither waited nor said so"
        assert pruning.stderr.readline() == "Waiting for sysroot lock...\n"
        # Nothing is listed, let alone removed, while a deployment may be under way.
        time.sleep(0.5)
        assert pruning.poll() is None
    out, err = pruning.communicate(timeout=120)
    assert (pruning.returncode, out, err) == (0, "No unused images.\n", "")


def installed_and_another(
    registry: Registry, target: Path, tmp_path: Path, name: str
) -> tuple[Published, Published]:
    """An image installed with the container backend, and another in the registry."""
    base = publish(registry, tmp_path, sample_image("1.0"), repo=f"pybootc/{name}-base")
    install_ok(target, base)
    return base, publish(registry, tmp_path, sample_image("9.9"), repo=f"pybootc/{name}-extra")


def test_gc_keeps_an_image_a_container_was_made_from(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    _, extra = installed_and_another(registry, target, tmp_path, "keep")
    ok(
        bootc(
            "internals",
            "podman",
            "pull",
            "--quiet",
            "--tls-verify=false",
            extra.ref,
            sysroot=target,
        )
    )
    ok(
        bootc(
            "internals", "podman", "create", "--name", "keeper", extra.ref, "true", sysroot=target
        )
    )

    assert ok(bootc("image", "prune", sysroot=target)) == "No unused images.\n"
    assert extra.ref in ok(bootc("image", "list", sysroot=target))
    names = ok(
        bootc("internals", "podman", "ps", "--all", "--format", "{{.Names}}", sysroot=target)
    )
    assert names.split() == ["keeper"]

    ok(bootc("internals", "podman", "rm", "keeper", sysroot=target))
    assert ok(bootc("image", "prune", sysroot=target)).startswith("Removed sha256:")
    assert extra.ref not in ok(bootc("image", "list", sysroot=target))


def test_image_cmd_is_podman_image_against_bootc_storage(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    base, extra = installed_and_another(registry, target, tmp_path, "cmd")
    ok(bootc("image", "cmd", "pull", extra.ref, sysroot=target))
    listed = bootc("image", "cmd", "list", "--format", "{{.Repository}}:{{.Tag}}", sysroot=target)
    assert {base.ref, extra.ref} <= set(ok(listed).split())
    assert extra.ref in ok(bootc("image", "list", sysroot=target))


def test_switch_mutate_in_place_rewrites_the_origin_only(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    """Upstream's hidden switch for installers: the deployment follows another image,
    nothing is fetched or deployed, and the next upgrade pulls from there with the
    deployment's own backend."""
    local = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/mip", tag="local")
    remote = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/mip-os", tag="stable")
    install_ok(target, local)
    before, asked = state(target), len(registry.requests())
    # Options that mean nothing to an origin rewrite are refused, as upgrade's
    # conflicting options are: usage, then the error, exit 2.
    for flag in (["--apply"], ["--retain"], ["--backend", "ostree"]):
        proc = bootc("switch", "--mutate-in-place", *flag, remote.docker, sysroot=target)
        assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == (
            f"bootc switch: error: argument {flag[0]}: not allowed with argument --mutate-in-place"
        )
        assert state(target) == before

    out = ok(bootc("switch", "--mutate-in-place", remote.docker, sysroot=target))
    checksum = before.deployments[0][0]
    assert out == f"Updated {checksum}.0 to pull from ostree-unverified-registry:{remote.ref}\n"
    assert registry.requests()[asked:] == []
    after = state(target)
    assert [c for c, _ in after.deployments] == [c for c, _ in before.deployments]
    assert (after.refs, after.images) == (before.refs, before.images)
    document = host(target)
    assert document.spec.image is not None and document.spec.image.image == remote.ref
    staged = document.status.staged
    assert staged is not None and staged.image is not None and staged.image.version == "1.0"

    out = ok(bootc("upgrade", sysroot=target))
    assert out.startswith(f"Queued for next boot: {remote.ref}") and "Version: 2.0" in out
    staged = host(target).status.staged
    assert staged is not None and staged.store == "containerStorage"
