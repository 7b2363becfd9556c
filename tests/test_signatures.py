"""Signed images, on both backends, with both kinds of signature containers/image knows:
GPG signatures made by `skopeo copy --sign-by` into a lookaside store set in registries.d,
and sigstore signatures (`--sign-by-sigstore-private-key`) stored in the registry as
attachments. containers/image judges them against a policy.json that trusts one key.

Debian 12's skopeo has sigstore disabled, so there the sigstore cases run in a Debian 13
chroot (tests/toolbox.py), against the same registry; on Debian 13 they run on the host.

Every refusal is one `error:` line and leaves deployments, refs and bootc's storage as
they were.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import ok, one_error_line
from tests.support import REGISTRIES_DROPIN_DIR, Registry
from tests.toolbox import Toolbox, sigstore_toolbox

pytestmark = pytest.mark.registry

REGISTRIES_D = Path("/etc/containers/registries.d")
BACKENDS = ["ostree", "container"]
KINDS = ["gpg", "sigstore"]
REJECTED = "Source image rejected: "
NO_SIGNATURE = REJECTED + "A signature was required, but no signature exists"
# What containers/image says of a signature made by a key the policy does not trust.
OTHER_KEY = {
    "gpg": "Invalid GPG signature: ",
    "sigstore": "cryptographic signature verification failed: ",
}
SIGNERS = ("trusted", "other")

_policies = itertools.count()


@dataclass(frozen=True)
class Signing:
    """Two keys of one kind, the test images and the registry, in the toolbox that signs
    and verifies them. Paths are the toolbox's view."""

    kind: str
    toolbox: Toolbox
    registry: Registry
    work: Path
    layout: Path
    requirement: Mapping[str, Any]  # the policy entry that trusts the `trusted` key
    sign_options: Mapping[str, list[str]]  # skopeo copy options, per signer
    env: Mapping[str, str]

    def push(self, tag: str, repo: str, dest_tag: str, *, sign_by: str | None) -> str:
        """Push `tag` of the layout to REPO:DEST_TAG, signed by `sign_by`; its digest."""
        ref = f"{self.registry.address}/{repo}:{dest_tag}"
        sign = self.sign_options[sign_by] if sign_by else []
        self.toolbox.run(
            ["skopeo", "copy", "--quiet", *sign, f"oci:{self.layout}:{tag}", f"docker://{ref}"],
            env=self.env,
        )
        return self.digest(repo, dest_tag)

    def digest(self, repo: str, tag: str) -> str:
        return "sha256:" + hashlib.sha256(self._manifest(repo, tag)[0]).hexdigest()

    def move_signature(self, repo: str, source: str, dest: str) -> None:
        """Make the signatures of digest `source` those of digest `dest` too, as an
        attacker with write access to where signatures are kept could."""
        if self.kind == "gpg":
            lookaside = self.toolbox.outside(self.work / "lookaside")
            (signature,) = _signature_dir(lookaside, repo, source).iterdir()
            destination = _signature_dir(lookaside, repo, dest)
            destination.mkdir(parents=True)
            shutil.copy(signature, destination / "signature-1")
        else:
            # A sigstore attachment is an OCI manifest tagged after the digest it signs.
            body, media_type = self._manifest(repo, _attachment_tag(source))
            request = urllib.request.Request(
                f"http://{self.registry.address}/v2/{repo}/manifests/{_attachment_tag(dest)}",
                data=body,
                method="PUT",
                headers={"Content-Type": media_type},
            )
            with urllib.request.urlopen(request) as response:
                assert response.status == 201

    def _manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        request = urllib.request.Request(
            f"http://{self.registry.address}/v2/{repo}/manifests/{reference}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(request) as response:
            return response.read(), response.headers["Content-Type"]


def _signature_dir(lookaside: Path, repo: str, digest: str) -> Path:
    return lookaside / f"{repo}@{digest.replace(':', '=')}"


def _attachment_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def _gpg_keys(toolbox: Toolbox, gnupghome: Path) -> Path:
    """Two GPG keys, trusted@ and other@pybootc.test; the trusted one's public key."""
    env = {"GNUPGHOME": str(gnupghome)}
    toolbox.outside(gnupghome).mkdir(mode=0o700)
    for signer in SIGNERS:
        params = (
            "%no-protection\nKey-Type: RSA\nKey-Length: 2048\n"
            f"Name-Real: pybootc test\nName-Email: {signer}@pybootc.test\nExpire-Date: 0\n"
            "%commit\n"
        )
        params_file = gnupghome.with_name(f"{signer}.params")
        toolbox.outside(params_file).write_text(params)
        toolbox.run(["gpg", "--batch", "--gen-key", params_file], env=env)
    exported = toolbox.run(["gpg", "--armor", "--export", "trusted@pybootc.test"], env=env)
    public = gnupghome.with_name("trusted.gpg")
    toolbox.outside(public).write_text(exported.stdout)
    return public


def _sigstore_keys(toolbox: Toolbox, work: Path) -> Path:
    """Two sigstore key pairs, WORK/trusted and WORK/other, with an empty passphrase."""
    toolbox.outside(work / "passphrase").write_text("")
    for signer in SIGNERS:
        toolbox.run(
            ["skopeo", "generate-sigstore-key", "--output-prefix", work / signer,
             "--passphrase-file", work / "passphrase"]
        )  # fmt: skip
    return work / "trusted.pub"


@contextmanager
def signing_setup(kind: str, toolbox: Toolbox, registry: Registry) -> Iterator[Signing]:
    """Keys of `kind`, the registry's signature settings and the test images (which
    bench/signatures.py signs too)."""
    with toolbox.tmpfs("256m") as work:
        layout = OciLayout(toolbox.outside(work / "oci"))
        # Each case its own image: signatures belong to a manifest digest, not to a tag.
        for version in ("1.0", "2.0", "3.0", "4.0"):
            layout.add_image(version, sample_image(version))
        # Where this registry's signatures are written and read, as an operator sets it.
        if kind == "gpg":
            public = _gpg_keys(toolbox, work / "gnupg")
            requirement: dict[str, Any] = {
                "type": "signedBy", "keyType": "GPGKeys", "keyPath": str(public)
            }  # fmt: skip
            lookaside = work / "lookaside"
            toolbox.outside(lookaside).mkdir()
            registry_config = (
                f"lookaside: file://{lookaside}\n    lookaside-staging: file://{lookaside}"
            )
            sign = {s: ["--sign-by", f"{s}@pybootc.test"] for s in SIGNERS}
            env = {"GNUPGHOME": str(work / "gnupg")}
        else:
            public = _sigstore_keys(toolbox, work)
            requirement = {
                "type": "sigstoreSigned",
                "keyPath": str(public),
                "signedIdentity": {"type": "matchRepository"},
            }
            registry_config = "use-sigstore-attachments: true"
            sign = {
                s: ["--sign-by-sigstore-private-key", str(work / f"{s}.private"),
                    "--sign-passphrase-file", str(work / "passphrase")]
                for s in SIGNERS
            }  # fmt: skip
            env = {}
        name = f"pybootc-test-{registry.address.replace(':', '-')}"
        dropin = toolbox.outside(REGISTRIES_D / f"{name}-{kind}.yaml")
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"docker:\n  {registry.address}:\n    {registry_config}\n")
        # A chroot needs the registry's own plain-HTTP drop-in too; the host has it.
        insecure = REGISTRIES_DROPIN_DIR / f"pybootc-test-{registry.address.split(':')[1]}.conf"
        copied = None if toolbox.is_host else toolbox.outside(insecure)
        if copied is not None:
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(insecure, copied)
        try:
            yield Signing(kind, toolbox, registry, work, work / "oci", requirement, sign, env)
        finally:
            dropin.unlink(missing_ok=True)
            if copied is not None:
                copied.unlink(missing_ok=True)
            if kind == "gpg":
                # gpg started an agent for the keyring; it would outlive the test.
                toolbox.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)


@pytest.fixture(scope="module", params=KINDS)
def signing(request: pytest.FixtureRequest, registry: Registry) -> Iterator[Signing]:
    with ExitStack() as stack:
        if request.param == "gpg":
            toolbox = Toolbox(Path("/"), "this host")
        else:
            toolbox = stack.enter_context(sigstore_toolbox())
        yield stack.enter_context(signing_setup(request.param, toolbox, registry))


@pytest.fixture
def target(signing: Signing) -> Iterator[Path]:
    """An empty sysroot directory on a tmpfs of its own, in the signing toolbox."""
    with signing.toolbox.tmpfs() as mount:
        signing.toolbox.outside(mount / "sysroot").mkdir()
        yield mount / "sysroot"


def write_policy(
    signing: Signing, document: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Path:
    path = signing.work / f"policy-{next(_policies)}.json"
    signing.toolbox.outside(path).write_text(json.dumps(document))
    monkeypatch.setenv("CONTAINERS_POLICY_JSON", str(path))
    return path


@pytest.fixture
def policy(signing: Signing, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Reject by default; `pybootc/signed` needs the trusted key, `pybootc/open` nothing."""
    address = signing.registry.address
    document = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                f"{address}/pybootc/signed": [dict(signing.requirement)],
                f"{address}/pybootc/open": [{"type": "insecureAcceptAnything"}],
            }
        },
    }
    return write_policy(signing, document, monkeypatch)


def signed_ref(signing: Signing, repo: str, tag: str) -> str:
    return f"ostree-image-signed:docker://{signing.registry.address}/{repo}:{tag}"


def bootc(signing: Signing, *args: str, sysroot: Path) -> subprocess.CompletedProcess[str]:
    return signing.toolbox.bootc(*args, sysroot=sysroot)


def install(signing: Signing, target: Path, image: str, backend: str) -> str:
    proc = signing.toolbox.bootc(
        "install", "to-filesystem", "--backend", backend, "--source-imgref", image, str(target)
    )
    return ok(proc)


def refused(signing: Signing, target: Path, *args: str) -> str:
    """The one error line of a command that must change nothing."""
    before = signing.toolbox.state(target)
    line = one_error_line(bootc(signing, *args, sysroot=target))
    assert signing.toolbox.state(target) == before
    return line


def repo_for(signing: Signing, backend: str, case: str) -> str:
    return f"pybootc/signed/{signing.kind}-{backend}-{case}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_signed_by_the_trusted_key_is_deployed_and_the_rest_refused(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    repo = repo_for(signing, backend, "a")
    v1 = signing.push("1.0", repo, "v1", sign_by="trusted")
    signing.push("2.0", repo, "unsigned", sign_by=None)
    signing.push("4.0", repo, "by-other", sign_by="other")
    moved = signing.push("3.0", repo, "moved", sign_by=None)

    out = install(signing, target, signed_ref(signing, repo, "v1"), backend)
    assert out.startswith(f"Queued for next boot: {signed_ref(signing, repo, 'v1')}")
    host = json.loads(ok(bootc(signing, "status", "--format", "json", sysroot=target)))
    assert host["status"]["staged"]["image"]["image"]["signature"] == "containerPolicy"
    human = ok(bootc(signing, "status", "--format", "humanreadable", "-v", sysroot=target))
    assert re.search(r"\n +Signature: container-policy\n", human), human

    source = f"docker://{signing.registry.address}/{repo}"
    line = refused(signing, target, "switch", signed_ref(signing, repo, "unsigned"))
    assert line == f"error: Fetching manifest of {source}:unsigned: {NO_SIGNATURE}"

    line = refused(signing, target, "switch", signed_ref(signing, repo, "by-other"))
    assert line.startswith(f"error: Fetching manifest of {source}:by-other: {REJECTED}")
    assert f"{REJECTED}{OTHER_KEY[signing.kind]}" in line, line

    # The trusted signature of v1, copied to sit next to another manifest.
    signing.move_signature(repo, v1, moved)
    line = refused(signing, target, "switch", signed_ref(signing, repo, "moved"))
    assert line.startswith(f"error: Fetching manifest of {source}:moved: {REJECTED}")
    assert f"{REJECTED}Signature for digest {v1} does not match" in line


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unsigned_build_under_a_signed_tag_is_not_upgraded_to(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    repo = repo_for(signing, backend, "b")
    signing.push("1.0", repo, "stream", sign_by="trusted")
    install(signing, target, signed_ref(signing, repo, "stream"), backend)
    signing.push("2.0", repo, "stream", sign_by=None)
    source = f"docker://{signing.registry.address}/{repo}:stream"
    expected = f"error: Fetching manifest of {source}: {NO_SIGNATURE}"
    assert refused(signing, target, "upgrade") == expected
    assert refused(signing, target, "upgrade", "--check") == expected
    # A signed build under the same tag is taken.
    signing.push("3.0", repo, "stream", sign_by="trusted")
    assert "Version: 3.0" in ok(bootc(signing, "upgrade", sysroot=target))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unverified_images_follow_the_policy_without_needing_a_signature(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    open_repo = f"pybootc/open/{signing.kind}-{backend}"
    signing.push("1.0", open_repo, "v1", sign_by=None)
    name = f"{signing.registry.address}/{open_repo}:v1"
    queued = install(signing, target, f"ostree-unverified-registry:{name}", backend)
    assert queued.startswith(f"Queued for next boot: {name}\n")
    # The policy still applies to what bootc does not ask to be signed.
    repo = repo_for(signing, backend, "c")
    signing.push("2.0", repo, "unsigned", sign_by=None)
    unsigned = f"ostree-unverified-registry:{signing.registry.address}/{repo}:unsigned"
    assert refused(signing, target, "switch", unsigned).endswith(NO_SIGNATURE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_signed_image_under_a_policy_that_accepts_anything_is_refused(
    signing: Signing, policy: Path, target: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_for(signing, backend, "d")
    signing.push("1.0", repo, "stream", sign_by="trusted")
    install(signing, target, signed_ref(signing, repo, "stream"), backend)
    write_policy(signing, {"default": [{"type": "insecureAcceptAnything"}]}, monkeypatch)
    expected = (
        "error: containers-policy.json specifies a default of `insecureAcceptAnything`;"
        " refusing usage"
    )
    assert refused(signing, target, "upgrade") == expected
    assert refused(signing, target, "upgrade", "--check") == expected
    # Before anything is fetched: the tag need not exist.
    assert refused(signing, target, "switch", signed_ref(signing, repo, "next")) == expected
    # The spec the host follows is unchanged: as upstream's, that switch reads no
    # policy and asks the registry nothing.
    same = bootc(signing, "switch", signed_ref(signing, repo, "stream"), sysroot=target)
    assert ok(same) == "Image specification is unchanged.\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_switching_only_how_an_image_is_verified_keeps_its_ref(
    signing: Signing, policy: Path, target: Path, backend: str
) -> None:
    """The image's ref is named by transport and name alone: the switch that starts
    verifying the image it runs must not drop the ref its own import has just set."""
    repo = repo_for(signing, backend, "e")
    signing.push("1.0", repo, "v1", sign_by="trusted")
    unverified = f"ostree-unverified-registry:{signing.registry.address}/{repo}:v1"
    install(signing, target, unverified, backend)

    def image_refs() -> list[str]:
        return re.findall(r"'(ostree/container/image/[^']+)'", signing.toolbox.state(target))

    (ref,) = image_refs()
    ok(bootc(signing, "switch", signed_ref(signing, repo, "v1"), sysroot=target))
    assert image_refs() == [ref]
    listed = json.loads(ok(bootc(signing, "image", "list", "--format", "json", sysroot=target)))
    hosts = [image["image"] for image in listed if image["image_type"] == "host"]
    assert hosts == [f"docker://{signing.registry.address}/{repo}:v1"]


@pytest.mark.parametrize("signing", ["sigstore"], indirect=True)
def test_this_hosts_skopeo_verifies_a_sigstore_signature_or_refuses_the_image(
    signing: Signing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wherever the sigstore cases ran, this host's own skopeo judges one more image:
    Debian 13's verifies it, Debian 12's (sigstore disabled) refuses it: never unchecked."""
    repo = repo_for(signing, "host", "e")
    signing.push("1.0", repo, "v1", sign_by="trusted")
    host = Toolbox(Path("/"), "this host")
    key = signing.toolbox.outside(Path(signing.requirement["keyPath"]))
    document = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                f"{signing.registry.address}/pybootc/signed": [
                    {**signing.requirement, "keyPath": str(key)}
                ]
            }
        },
    }
    (tmp_path / "policy.json").write_text(json.dumps(document))
    monkeypatch.setenv("CONTAINERS_POLICY_JSON", str(tmp_path / "policy.json"))
    # Where the sigstore cases run on this host, their drop-in says this already, and
    # skopeo 1.18 refuses a registry that two drop-ins name.
    dropin = None
    if not signing.toolbox.is_host:
        address = signing.registry.address
        dropin = REGISTRIES_D / f"pybootc-test-{address.replace(':', '-')}-host.yaml"
        dropin.write_text(f"docker:\n  {address}:\n    use-sigstore-attachments: true\n")
    with host.tmpfs() as mount:
        sysroot = mount / "sysroot"
        sysroot.mkdir()
        try:
            proc = host.bootc(
                "install", "to-filesystem", "--backend", "ostree",
                "--source-imgref", signed_ref(signing, repo, "v1"), str(sysroot),
            )  # fmt: skip
        finally:
            if dropin is not None:
                dropin.unlink()
        if signing.toolbox.is_host:
            assert ok(proc).startswith("Queued for next boot: ")
        else:
            line = one_error_line(proc)
            assert line.endswith(f"{REJECTED}Debian-local change: sigstore disabled"), line
            assert not any(sysroot.iterdir())
