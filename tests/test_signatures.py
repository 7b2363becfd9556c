"""Signed images, on both backends: real GPG signatures, made by `skopeo copy --sign-by`
into the loopback registry with a lookaside store set in registries.d, and judged by
containers/image against a policy.json that trusts one key.

Every refusal is one `error:` line and leaves deployments, refs and bootc's storage as
they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pybootc.ocibuild import OciLayout
from pybootc.sample_image import sample_image
from tests.backend_support import bootc, install, ok, one_error_line, state
from tests.support import Registry

pytestmark = pytest.mark.registry

REGISTRIES_D = Path("/etc/containers/registries.d")
BACKENDS = ["ostree", "container"]
REJECTED = "Source image rejected: "
NO_SIGNATURE = REJECTED + "A signature was required, but no signature exists"


@dataclass(frozen=True)
class Signing:
    """Two GPG keys, a lookaside store the test registry's signatures go to, a layout."""

    gnupghome: Path
    trusted: Path  # the public key the policy trusts
    lookaside: Path
    layout: OciLayout
    registry: Registry

    def push(self, tag: str, repo: str, dest_tag: str, *, sign_by: str | None) -> str:
        """Push `tag` of the layout to REPO:DEST_TAG, signed by `sign_by`; its digest."""
        ref = f"{self.registry.address}/{repo}:{dest_tag}"
        sign = ["--sign-by", sign_by] if sign_by else []
        subprocess.run(
            ["skopeo", "copy", "--quiet", *sign, self.layout.ref(tag), f"docker://{ref}"],
            env={**os.environ, "GNUPGHOME": str(self.gnupghome)},
            check=True,
        )
        return self.digest(repo, dest_tag)

    def digest(self, repo: str, tag: str) -> str:
        ref = f"docker://{self.registry.address}/{repo}:{tag}"
        raw = subprocess.run(["skopeo", "inspect", "--raw", ref], capture_output=True, check=True)
        return "sha256:" + hashlib.sha256(raw.stdout).hexdigest()

    def signatures(self, repo: str, digest: str) -> Path:
        return self.lookaside / f"{repo}@{digest.replace(':', '=')}"


def _gen_key(gnupghome: Path, email: str) -> None:
    params = (
        "%no-protection\nKey-Type: RSA\nKey-Length: 2048\n"
        f"Name-Real: pybootc test\nName-Email: {email}\nExpire-Date: 0\n%commit\n"
    )
    subprocess.run(
        ["gpg", "--batch", "--gen-key"],
        input=params.encode(),
        env={**os.environ, "GNUPGHOME": str(gnupghome)},
        capture_output=True,
        check=True,
    )


@pytest.fixture(scope="module")
def signing(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signing]:
    work = tmp_path_factory.mktemp("signing")
    gnupghome = work / "gnupg"
    gnupghome.mkdir(mode=0o700)
    for email in ("trusted@pybootc.test", "other@pybootc.test"):
        _gen_key(gnupghome, email)
    trusted = work / "trusted.gpg"
    trusted.write_bytes(
        subprocess.run(
            ["gpg", "--export", "trusted@pybootc.test"],
            env={**os.environ, "GNUPGHOME": str(gnupghome)},
            capture_output=True,
            check=True,
        ).stdout
    )
    lookaside = work / "lookaside"
    lookaside.mkdir()
    # Where signatures of this registry are written and read, as an operator sets it.
    REGISTRIES_D.mkdir(parents=True, exist_ok=True)
    dropin = REGISTRIES_D / f"pybootc-test-{registry.address.replace(':', '-')}.yaml"
    dropin.write_text(
        f"docker:\n  {registry.address}:\n"
        f"    lookaside: file://{lookaside}\n    lookaside-staging: file://{lookaside}\n"
    )
    layout = OciLayout(work / "oci")
    # Each case its own image: signatures belong to a manifest digest, not to a tag.
    for version in ("1.0", "2.0", "3.0", "4.0"):
        layout.add_image(version, sample_image(version))
    try:
        yield Signing(gnupghome, trusted, lookaside, layout, registry)
    finally:
        dropin.unlink(missing_ok=True)


@pytest.fixture
def policy(signing: Signing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Reject by default; `pybootc/signed` needs the trusted key, `pybootc/open` nothing."""
    address = signing.registry.address
    document = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                f"{address}/pybootc/signed": [
                    {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(signing.trusted)}
                ],
                f"{address}/pybootc/open": [{"type": "insecureAcceptAnything"}],
            }
        },
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    monkeypatch.setenv("CONTAINERS_POLICY_JSON", str(path))
    return path


def signed_ref(signing: Signing, repo: str, tag: str) -> str:
    return f"ostree-image-signed:docker://{signing.registry.address}/{repo}:{tag}"


def refused(target: Path, *args: str) -> str:
    """The one error line of a command that must change nothing."""
    before = state(target)
    line = one_error_line(bootc(*args, sysroot=target))
    assert state(target) == before
    return line


@pytest.mark.parametrize("backend", BACKENDS)
def test_signed_by_the_trusted_key_is_deployed_and_the_rest_refused(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    repo = f"pybootc/signed/{backend}-a"
    signing.push("1.0", repo, "v1", sign_by="trusted@pybootc.test")
    signing.push("2.0", repo, "unsigned", sign_by=None)
    signing.push("4.0", repo, "by-other", sign_by="other@pybootc.test")
    moved = signing.push("3.0", repo, "moved", sign_by=None)

    out = ok(install(target, signed_ref(signing, repo, "v1"), backend=backend))
    assert out.startswith(f"Queued for next boot: {signed_ref(signing, repo, 'v1')}")
    host = json.loads(ok(bootc("status", "--format", "json", sysroot=target)))
    assert host["status"]["staged"]["image"]["image"]["signature"] == "containerPolicy"
    human = ok(bootc("status", "--format", "humanreadable", "-v", sysroot=target))
    assert re.search(r"\n +Signature: container-policy\n", human), human

    source = f"docker://{signing.registry.address}/{repo}"
    line = refused(target, "switch", signed_ref(signing, repo, "unsigned"))
    assert line == f"error: Fetching manifest of {source}:unsigned: {NO_SIGNATURE}"

    line = refused(target, "switch", signed_ref(signing, repo, "by-other"))
    assert line.startswith(
        f"error: Fetching manifest of {source}:by-other: Source image rejected: "
    )
    assert f"{REJECTED}Invalid GPG signature: " in line

    # The trusted signature of v1, copied to sit next to another manifest.
    (v1_signature,) = signing.signatures(repo, signing.digest(repo, "v1")).iterdir()
    destination = signing.signatures(repo, moved)
    destination.mkdir(parents=True)
    shutil.copy(v1_signature, destination / "signature-1")
    line = refused(target, "switch", signed_ref(signing, repo, "moved"))
    assert line.startswith(f"error: Fetching manifest of {source}:moved: {REJECTED}")
    assert f"{REJECTED}Signature for digest {signing.digest(repo, 'v1')} does not match" in line


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unsigned_build_under_a_signed_tag_is_not_upgraded_to(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    repo = f"pybootc/signed/{backend}-b"
    signing.push("1.0", repo, "stream", sign_by="trusted@pybootc.test")
    ok(install(target, signed_ref(signing, repo, "stream"), backend=backend))
    signing.push("2.0", repo, "stream", sign_by=None)
    source = f"docker://{signing.registry.address}/{repo}:stream"
    expected = f"error: Fetching manifest of {source}: {NO_SIGNATURE}"
    assert refused(target, "upgrade") == expected
    assert refused(target, "upgrade", "--check") == expected
    # A signed build under the same tag is taken.
    signing.push("3.0", repo, "stream", sign_by="trusted@pybootc.test")
    assert "Version: 3.0" in ok(bootc("upgrade", sysroot=target))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unverified_images_follow_the_policy_without_needing_a_signature(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    open_repo = f"pybootc/open/{backend}"
    signing.push("1.0", open_repo, "v1", sign_by=None)
    imgref = f"ostree-unverified-registry:{signing.registry.address}/{open_repo}:v1"
    assert ok(install(target, imgref, backend=backend)).startswith(
        f"Queued for next boot: {imgref}"
    )
    # The policy still applies to what bootc does not ask to be signed.
    repo = f"pybootc/signed/{backend}-c"
    signing.push("2.0", repo, "unsigned", sign_by=None)
    line = refused(
        target, "switch", f"ostree-unverified-registry:{signing.registry.address}/{repo}:unsigned"
    )
    assert line.endswith(NO_SIGNATURE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_signed_image_under_a_policy_that_accepts_anything_is_refused(
    signing: Signing, policy: Path, target: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = f"pybootc/signed/{backend}-d"
    signing.push("1.0", repo, "stream", sign_by="trusted@pybootc.test")
    ok(install(target, signed_ref(signing, repo, "stream"), backend=backend))
    lax = policy.with_name("lax.json")
    lax.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    monkeypatch.setenv("CONTAINERS_POLICY_JSON", str(lax))
    expected = (
        "error: containers-policy.json specifies a default of `insecureAcceptAnything`;"
        " refusing usage"
    )
    assert refused(target, "upgrade") == expected
    assert refused(target, "upgrade", "--check") == expected
    assert refused(target, "switch", signed_ref(signing, repo, "stream")) == expected
