"""Layer formats the container backend gets through containers-storage, end to end.

zstd and zstd:chunked layers deploy the same tree as gzip ones (one root tree
checksum for one image content), and ocicrypt-encrypted images deploy with
their key, fail clearly without it, and keep upgrading from the key's path.
"""

from __future__ import annotations

import configparser
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pybootc.host.model import Host
from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.model import Descriptor
from pybootc.ostree.ext_format import blob_ref, image_ref
from pybootc.ostree.origin import commit_layer_digests
from pybootc.ostree.repo import read_commit_metadata, resolve_ref, root_tree_checksum
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import Compression, OciLayout, push
from tests.backend_support import bootc, install, ok, one_error_line, state
from tests.support import Registry

pytestmark = pytest.mark.registry

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# skopeo's --dest-compress-format for each variant; gzip is what ocibuild writes.
FORMATS = {"gzip": None, "zstd": "zstd", "zstd-chunked": "zstd:chunked"}


def skopeo(*args: str) -> bytes:
    return subprocess.run(["skopeo", *args], capture_output=True, check=True).stdout


def pushed_manifest(docker_ref: str) -> dict[str, object]:
    manifest: dict[str, object] = json.loads(skopeo("inspect", "--raw", docker_ref))
    return manifest


def chunked(layer: dict[str, object]) -> bool:
    return Descriptor.from_json(layer, "layer").toc_digest is not None


def layers_of(manifest: dict[str, object]) -> list[dict[str, object]]:
    layers = manifest["layers"]
    assert isinstance(layers, list) and layers
    return layers


def publish_in_formats(
    registry: Registry, workdir: Path, version: str, repo: str
) -> dict[str, str]:
    """One image content pushed as gzip, zstd and zstd:chunked; docker:// refs by format.

    The variants are recompressed from an OCI layout, not registry to registry,
    where skopeo may reuse the gzip blob instead of recompressing.
    """
    source = OciLayout(workdir / f"gzip-{version}")
    source.add_image(version, sample_image(version, compression=Compression.GZIP))
    refs = {}
    for name, compress_format in FORMATS.items():
        layout_ref = source.ref(version)
        if compress_format is not None:
            layout_ref = f"oci:{workdir / f'{name}-{version}'}:{version}"
            recompress = ["--dest-compress-format", compress_format]
            skopeo("copy", "--quiet", *recompress, source.ref(version), layout_ref)
        refs[name] = f"docker://{registry.address}/{repo}:{name}"
        # Without --preserve-digests skopeo may push a blob the registry already has
        # for the same diff_id (the gzip one) in place of the zstd one.
        push(layout_ref, refs[name], "--preserve-digests")
    return refs


@dataclass(frozen=True)
class Deployed:
    """The commit of the deployment that boots next, what is in it and where from."""

    commit: str
    tree: str  # the root tree checksum: equal for equal trees
    layers: list[dict[str, object]]  # of the manifest the commit records


def deployed(sysroot_path: Path) -> Deployed:
    """The deployment that boots next, checking that the image's ref
    (ostree/container/image/...) holds that same merge commit."""
    sysroot = Sysroot.open(sysroot_path)
    deployment = sysroot.deployments()[0]
    origin = deployment.origin["origin"]["container-image-reference"]
    assert resolve_ref(sysroot.repo, image_ref(OstreeImageReference.parse(origin).imgref)) == (
        deployment.checksum
    )
    manifest = read_commit_metadata(sysroot.repo, deployment.checksum)["ostree.manifest"]
    assert isinstance(manifest, str)
    return Deployed(
        deployment.checksum,
        root_tree_checksum(sysroot.repo, deployment.checksum),
        layers_of(json.loads(manifest)),
    )


def staged_version(sysroot_path: Path) -> str | None:
    host = Host.from_json(ok(bootc("status", "--format", "json", sysroot=sysroot_path)))
    assert host.status.staged is not None and host.status.staged.image is not None
    return host.status.staged.image.version


def test_the_compression_formats_are_really_what_was_pushed(
    registry: Registry, tmp_path: Path
) -> None:
    refs = publish_in_formats(registry, tmp_path, "1.0", "pybootc/formats-pushed")
    manifests = {name: pushed_manifest(ref) for name, ref in refs.items()}
    assert {layer["mediaType"] for layer in layers_of(manifests["gzip"])} == {GZIP}
    for name in ("zstd", "zstd-chunked"):
        assert {layer["mediaType"] for layer in layers_of(manifests[name])} == {ZSTD}
    assert not any("annotations" in layer for layer in layers_of(manifests["zstd"]))
    assert all(chunked(layer) for layer in layers_of(manifests["zstd-chunked"]))
    # The same content, three encodings: one config (same diff_ids), three layer sets.
    assert len({json.dumps(m["config"]) for m in manifests.values()}) == 1
    digests = [tuple(layer["digest"] for layer in layers_of(m)) for m in manifests.values()]
    assert len(set(digests)) == 3


def test_gzip_zstd_and_zstd_chunked_deploy_the_same_tree(
    registry: Registry, target: Path, other_target: Path, tmp_path: Path
) -> None:
    refs = publish_in_formats(registry, tmp_path, "1.0", "pybootc/formats")

    ok(install(target, refs["gzip"]))
    seen = {"gzip": deployed(target)}
    previous = refs["gzip"]
    for name in ("zstd-chunked", "zstd"):
        out = ok(bootc("switch", refs[name], sysroot=target))
        pulled = refs[name].removeprefix("docker://")
        assert out.startswith(f"Queued for next boot: {pulled}")
        seen[name] = deployed(target)
        assert staged_version(target) == "1.0"
        assert len(state(target).deployments) == 2
        # Both deployments' images stay in bootc's storage, though gzip and zstd share
        # one image there (one config, one layer chain) under two manifest digests.
        listed = json.loads(ok(bootc("image", "list", "--format", "json", sysroot=target)))
        kept = {row["image"] for row in listed if row["image_type"] == "unified"}
        assert {refs[name], previous} <= {f"docker://{image}" for image in kept}, listed
        previous = refs[name]
    # Three commits (each records its own manifest), one tree.
    assert len({d.commit for d in seen.values()}) == 3
    assert len({d.tree for d in seen.values()}) == 1, seen
    assert {layer["mediaType"] for layer in seen["gzip"].layers} == {GZIP}
    assert {layer["mediaType"] for layer in seen["zstd"].layers} == {ZSTD}
    assert all(chunked(layer) for layer in seen["zstd-chunked"].layers)

    # A fresh sysroot that starts from zstd:chunked gets that tree too.
    ok(install(other_target, refs["zstd-chunked"]))
    fresh = deployed(other_target)
    assert fresh.tree == seen["gzip"].tree
    assert all(chunked(layer) for layer in fresh.layers)

    # upgrade follows a zstd:chunked tag to new content.
    newer = publish_in_formats(registry, tmp_path, "2.0", "pybootc/formats")
    assert newer["zstd-chunked"] == refs["zstd-chunked"]
    assert "Version: 2.0" in ok(bootc("upgrade", sysroot=other_target))
    assert staged_version(other_target) == "2.0"
    upgraded = deployed(other_target)
    assert upgraded.tree != fresh.tree and all(chunked(layer) for layer in upgraded.layers)


def key_pair(workdir: Path, name: str) -> tuple[Path, Path]:
    """An RSA key pair for ocicrypt's JWE scheme: (private, public)."""
    private, public = workdir / f"{name}.pem", workdir / f"{name}.pub.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], capture_output=True, check=True
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-out", str(public)],
        capture_output=True,
        check=True,
    )
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return key_pair(tmp_path, "priv")


def publish_encrypted(
    registry: Registry, workdir: Path, public_key: Path, version: str, repo: str
) -> str:
    layout = OciLayout(workdir / f"plain-{repo.replace('/', '-')}-{version}")
    layout.add_image(version, sample_image(version))
    ref = f"docker://{registry.address}/{repo}:latest"
    push(layout.ref(version), ref, "--encryption-key", f"jwe:{public_key}")
    assert all(
        str(layer["mediaType"]).endswith("+encrypted") for layer in layers_of(pushed_manifest(ref))
    )
    return ref


def origin_keys(sysroot_path: Path, private: Path) -> list[str | None]:
    """The decryption key each deployment's origin keyfile names, in boot order,
    after checking that no origin holds any of the key's contents."""
    secret = [line for line in private.read_text().splitlines() if "-----" not in line]
    keys: list[str | None] = []
    for deployment in Sysroot.open(sysroot_path).deployments():
        path = Path(f"{deployment.deployment_path}.origin")
        text = path.read_text()
        assert "PRIVATE KEY" not in text and not any(line in text for line in secret), text
        origin = configparser.ConfigParser(interpolation=None)
        origin.read_string(text)
        assert origin["pybootc"]["backend"] == "container"
        keys.append(origin["pybootc"].get("decryption-key"))
    return keys


def test_install_of_an_encrypted_image_needs_its_key(
    registry: Registry, target: Path, other_target: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    image = publish_encrypted(registry, tmp_path, public, "1.0", "pybootc/enc-install")

    line = one_error_line(install(other_target, image))
    assert "image is encrypted" in line and "unexpected EOF" not in line, line
    assert list(other_target.iterdir()) == []
    wrong, _ = key_pair(tmp_path, "wrong")
    line = one_error_line(install(other_target, image, "--decryption-key", str(wrong)))
    assert "could not be decrypted (is it the right key?)" in line, line
    assert list(other_target.iterdir()) == []

    out = ok(install(target, image, "--decryption-key", str(private)))
    assert out.startswith("Queued for next boot: ") and "Version: 1.0" in out
    assert staged_version(target) == "1.0"
    assert origin_keys(target, private) == [str(private)]
    # The deployment records the manifest the registry serves, not the decrypted copy,
    # and its image in bootc's storage (holding that copy) stays a GC root.
    assert ok(bootc("upgrade", sysroot=target)).endswith("\nNo update available.\n")
    listed = json.loads(ok(bootc("image", "list", "--format", "json", sysroot=target)))
    assert sorted(row["image_type"] for row in listed) == ["host", "unified"]


def test_switch_to_an_encrypted_image_needs_the_key_and_upgrade_remembers_it(
    registry: Registry, target: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    layout = OciLayout(tmp_path / "plain")
    layout.add_image("1.0", sample_image("1.0"))
    plain = f"docker://{registry.address}/pybootc/enc-plain:latest"
    push(layout.ref("1.0"), plain)
    ok(install(target, plain))
    image = publish_encrypted(registry, tmp_path, public, "2.0", "pybootc/enc-switch")

    before = state(target)
    line = one_error_line(bootc("switch", image, sysroot=target))
    assert "image is encrypted" in line and "unexpected EOF" not in line, line
    assert state(target) == before

    with_key = ("switch", "--decryption-key", str(private), image)
    ok(bootc(*with_key, sysroot=target))
    assert staged_version(target) == "2.0"
    assert origin_keys(target, private) == [str(private), None]
    # The deployment records the manifest the registry serves, not the decrypted copy.
    assert ok(bootc(*with_key, sysroot=target)) == "Image specification is unchanged.\n"

    # A new encrypted version on the same tag: upgrade takes the key from the origin.
    publish_encrypted(registry, tmp_path, public, "3.0", "pybootc/enc-switch")
    out = ok(bootc("upgrade", sysroot=target))
    assert "Version: 3.0" in out
    assert staged_version(target) == "3.0"
    assert origin_keys(target, private) == [str(private), str(private)]
    assert ok(bootc("upgrade", sysroot=target)).endswith("\nNo update available.\n")
    # Each deployment's layer commits are kept, under the digests its manifest records
    # (the encrypted blobs'), so cleanups never drop them and an export finds them.
    sysroot = Sysroot.open(target)
    for deployment in sysroot.deployments():
        for digest in commit_layer_digests(sysroot.repo, deployment.checksum):
            assert resolve_ref(sysroot.repo, blob_ref(digest)) is not None, digest


@pytest.mark.parametrize(
    ("backend", "key", "message"),
    [
        (
            "ostree",
            "private",
            "error: Decryption key {key}: the ostree backend cannot decrypt images;"
            " use --backend container",
        ),
        ("container", "missing", "error: Decryption key {key}: no such file"),
    ],
)
def test_a_decryption_key_the_backend_cannot_use_is_refused_before_anything_is_fetched(
    registry: Registry,
    target: Path,
    tmp_path: Path,
    keys: tuple[Path, Path],
    *,
    backend: str,
    key: str,
    message: str,
) -> None:
    private, _ = keys
    layout = OciLayout(tmp_path / "plain")
    layout.add_image("1.0", sample_image("1.0"))
    plain = f"docker://{registry.address}/pybootc/enc-refused-{backend}:latest"
    push(layout.ref("1.0"), plain)
    path = private if key == "private" else tmp_path / "nonexistent.pem"
    expected = message.format(key=path)

    # An image that does not exist: refused for the key, so before asking the registry.
    missing = plain.replace(":latest", ":does-not-exist")
    refused_install = install(target, missing, "--decryption-key", str(path), backend=backend)
    assert one_error_line(refused_install) == expected
    assert list(target.iterdir()) == []
    ok(install(target, plain, backend=backend))
    before = state(target)
    for image in (plain, missing):
        switch = ("switch", "--backend", backend, "--decryption-key", str(path), image)
        assert one_error_line(bootc(*switch, sysroot=target)) == expected
        assert state(target) == before
