"""Registries as operators configure them: TLS with a private CA trusted through
/etc/containers/certs.d, and a registries.conf mirror that serves while the primary
does not answer. pybootc itself never turns TLS verification off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, push
from tests.backend_support import install, ok, one_error_line
from tests.support import (
    REGISTRIES_DROPIN_DIR,
    Registry,
    free_port,
    make_server_certificate,
    running_registry,
)

pytestmark = pytest.mark.registry

BACKENDS = ["ostree", "container"]
CERTS_D = Path("/etc/containers/certs.d")
PYBOOTC = Path(__file__).resolve().parents[1] / "pybootc"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """A registry on HTTPS with a certificate from a CA of its own; and that CA."""
    certificate = make_server_certificate(tmp_path_factory.mktemp("tls"))
    with running_registry(tls=certificate) as registry:
        yield registry, certificate.ca


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_registry_with_a_private_ca_is_trusted_through_certs_d(
    tls_registry: tuple[Registry, Path],
    target: Path,
    other_target: Path,
    tmp_path: Path,
    backend: str,
) -> None:
    registry, ca = tls_registry
    trust = CERTS_D / registry.address
    trust.mkdir(parents=True, exist_ok=True)
    (trust / "ca.crt").write_bytes(ca.read_bytes())
    image = f"docker://{registry.address}/pybootc/tls-{backend}:latest"
    try:
        layout = OciLayout(tmp_path / "oci")
        layout.add_image("os", sample_image("1.0"))
        push(layout.ref("os"), image)
        ok(install(target, image, backend=backend))
    finally:
        (trust / "ca.crt").unlink()
        trust.rmdir()
    # Untrusted again: the certificate is refused, nothing is installed.
    line = one_error_line(install(other_target, image, backend=backend))
    assert "certificate signed by unknown authority" in line, line
    assert list(other_target.iterdir()) == []


def test_no_code_path_turns_tls_verification_off() -> None:
    """Plain HTTP is allowed only by the tests' own registries.conf drop-ins."""
    sources = {path: path.read_text() for path in PYBOOTC.rglob("*.py")}
    turning_off = sorted(path.name for path, text in sources.items() if "tls-verify=false" in text)
    # ImageProxy has the option, as containers-image-proxy does; nothing sets it.
    assert turning_off == ["proxy.py"]
    assert not any("insecure_skip_tls_verification=True" in t for t in sources.values())
    assert not any("--insecure-policy" in t or "--src-tls-verify" in t for t in sources.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mirror_serves_while_the_primary_does_not_answer(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    primary = f"127.0.0.1:{free_port()}"  # nothing listens there
    repo = f"pybootc/mirrored-{backend}"
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", sample_image("1.0"))
    push(layout.ref("os"), f"docker://{registry.address}/{repo}:latest")
    dropin = REGISTRIES_DROPIN_DIR / f"pybootc-test-mirror-{backend}-{primary.split(':')[1]}.conf"
    dropin.write_text(
        f'[[registry]]\nlocation = "{primary}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{registry.address}"\ninsecure = true\n'
    )
    try:
        image = f"docker://{primary}/{repo}:latest"
        out = ok(install(target, image, backend=backend))
        assert out.startswith(f"Queued for next boot: {primary}/{repo}")
    finally:
        dropin.unlink()
    assert any(f"/v2/{repo}/blobs/" in r for r in registry.requests())
