"""Private registries: bootc's own auth.json, and never the user's credentials.

The registry wants a login (htpasswd). An install reads the host's
/etc/ostree/auth.json, which each test puts there in a mount namespace of its own
(the machine's /etc/ostree is never touched); switch, upgrade and upgrade --check on
a sysroot read the one in its deployment's /etc/ostree.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pybootc.oci.auth import RegistryAuth
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, push
from tests.backend_support import bootc, ok, one_error_line, state
from tests.support import LOGIN, Registry

pytestmark = pytest.mark.registry

BACKENDS = ["ostree", "container"]


def auth_json(path: Path, registry: Registry) -> Path:
    token = base64.b64encode(":".join(LOGIN).encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {registry.address: {"auth": token}}}))
    return path


def publish(registry: Registry, tmp_path: Path, repo: str, version: str) -> str:
    layout = OciLayout(tmp_path / f"layout-{version}")
    layout.add_image("os", sample_image(version))
    ref = f"{registry.address}/{repo}:latest"
    push(layout.ref("os"), f"docker://{ref}", "--dest-creds", ":".join(LOGIN))
    return f"docker://{ref}"


def install_with_host_auth(
    host_ostree: Path, target: Path, image: str, backend: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`bootc install to-filesystem`, with HOST_OSTREE as the host's /etc/ostree."""
    argv = [
        sys.executable, "-m", "pybootc", "install", "to-filesystem",
        "--backend", backend, "--source-imgref", image, str(target),
    ]  # fmt: skip
    script = 'mount --bind "$1" /etc/ostree && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(host_ostree), *argv],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def deployment_auth(target: Path) -> Path:
    deployment = Sysroot.open(target).deployments()[0]
    return deployment.deployment_path / "etc/ostree/auth.json"


@pytest.mark.parametrize("backend", BACKENDS)
def test_install_switch_and_upgrade_log_in_with_bootc_s_auth_file(
    private_registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    image = publish(private_registry, tmp_path, f"pybootc/private-{backend}", "1.0")
    host_ostree = tmp_path / "host-etc-ostree"
    auth_json(host_ostree / "auth.json", private_registry)
    ok(install_with_host_auth(host_ostree, target, image, backend))

    # The installed system's own /etc/ostree/auth.json is what updates log in with.
    auth_json(deployment_auth(target), private_registry)
    publish(private_registry, tmp_path, f"pybootc/private-{backend}", "2.0")
    assert ok(bootc("upgrade", "--check", sysroot=target)).startswith("Update available for: ")
    assert "Version: 2.0" in ok(bootc("upgrade", sysroot=target))

    # Without one, the registry says no, and nothing changes.
    for deployment in Sysroot.open(target).deployments():
        (deployment.deployment_path / "etc/ostree/auth.json").unlink(missing_ok=True)
    other = publish(private_registry, tmp_path, f"pybootc/private-{backend}-b", "3.0")
    before = state(target)
    for args in (("upgrade", "--check"), ("switch", other)):
        line = one_error_line(bootc(*args, sysroot=target))
        assert "unauthorized" in line or "authentication required" in line, line
    assert state(target) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_user_s_own_credentials_are_never_used(
    private_registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    image = publish(private_registry, tmp_path, f"pybootc/private-user-{backend}", "1.0")
    home = tmp_path / "home"
    user_auth = auth_json(home / ".config/containers/auth.json", private_registry)
    env = {
        **os.environ,
        "HOME": str(home),
        "REGISTRY_AUTH_FILE": str(user_auth),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    empty_host = tmp_path / "host-etc-ostree"
    empty_host.mkdir()
    proc = install_with_host_auth(empty_host, target, image, backend, env)
    line = one_error_line(proc)
    assert "unauthorized" in line or "authentication required" in line, line
    assert list(target.iterdir()) == []


def test_the_auth_file_is_found_in_upstream_order(tmp_path: Path) -> None:
    """/run/ostree, then /etc/ostree, then /usr/lib/ostree; none is anonymous."""
    assert RegistryAuth.find(tmp_path) == RegistryAuth(None)
    assert RegistryAuth.find(tmp_path).options() == ["--no-creds"]
    found = []
    for relative in ("usr/lib/ostree/auth.json", "etc/ostree/auth.json", "run/ostree/auth.json"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        found.append(RegistryAuth.find(tmp_path).authfile)
    assert found == [
        tmp_path / "usr/lib/ostree/auth.json",
        tmp_path / "etc/ostree/auth.json",
        tmp_path / "run/ostree/auth.json",
    ]
    # A directory of that name is no file of credentials.
    (tmp_path / "run/ostree/auth.json").unlink()
    (tmp_path / "run/ostree/auth.json").mkdir()
    assert RegistryAuth.find(tmp_path).authfile == tmp_path / "etc/ostree/auth.json"
