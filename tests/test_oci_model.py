"""Manifests, descriptors and configs parse from OCI and Docker JSON, or fail clearly."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootc.errors import BootcError
from pybootc.oci.model import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    LayerCompression,
    LayerFormat,
    Manifest,
    is_valid_digest,
    manifest_digest,
)

CONFIG_DIGEST = "sha256:" + "c" * 64
LAYER_DIGESTS = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]


def oci_manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": CONFIG_DIGEST, "size": 7},
        "layers": [
            {
                "mediaType": MEDIA_TYPE_OCI_LAYER_GZIP,
                "digest": LAYER_DIGESTS[0],
                "size": 100,
                "annotations": {"ostree.components": "bash"},
            },
            {"mediaType": MEDIA_TYPE_OCI_LAYER_GZIP, "digest": LAYER_DIGESTS[1], "size": 0},
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    manifest.update(overrides)
    return manifest


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def test_oci_manifest_parses_config_and_layers_in_order() -> None:
    manifest = Manifest.parse(encode(oci_manifest()))
    assert manifest.media_type == MEDIA_TYPE_OCI_MANIFEST
    assert manifest.config == Descriptor(MEDIA_TYPE_OCI_CONFIG, CONFIG_DIGEST, 7)
    assert [layer.digest for layer in manifest.layers] == LAYER_DIGESTS
    assert manifest.layers[0].annotations == {"ostree.components": "bash"}
    assert manifest.layers[0].compression is LayerCompression.GZIP
    assert manifest.annotations["org.opencontainers.image.created"] == "2024-01-01T00:00:00Z"


def test_docker_schema2_manifest_parses() -> None:
    raw = encode(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_DOCKER_CONFIG, "digest": CONFIG_DIGEST, "size": 7},
            "layers": [
                {"mediaType": MEDIA_TYPE_DOCKER_LAYER_GZIP, "digest": LAYER_DIGESTS[0], "size": 9}
            ],
        }
    )
    manifest = Manifest.parse(raw)
    assert manifest.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    assert manifest.layers[0].compression is LayerCompression.GZIP
    assert manifest.annotations == {}


def test_oci_manifest_without_media_type_is_accepted() -> None:
    raw = oci_manifest()
    del raw["mediaType"]
    assert Manifest.parse(encode(raw)).media_type == MEDIA_TYPE_OCI_MANIFEST


def test_descriptors_are_hashable_values() -> None:
    first = Manifest.parse(encode(oci_manifest()))
    second = Manifest.parse(encode(oci_manifest()))
    assert first == second
    assert len({*first.layers, *second.layers}) == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff", "Invalid image manifest: not JSON"),
        (b"{", "Invalid image manifest: not JSON"),
        (b"[]", "Invalid image manifest: expected a JSON object"),
        (
            b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "Invalid image manifest: it nests too deeply",
        ),
        (
            encode({"schemaVersion": 2, "manifests": []}),
            "Expected an image manifest, found an image index"
            " (application/vnd.oci.image.index.v1+json)",
        ),
        (
            encode(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                    "manifests": [],
                }
            ),
            "Expected an image manifest, found an image index"
            " (application/vnd.docker.distribution.manifest.list.v2+json)",
        ),
        (
            encode({"schemaVersion": 1, "name": "x", "fsLayers": []}),
            "Unsupported legacy manifest type: Docker schema 1",
        ),
        (
            encode(oci_manifest(mediaType="text/plain")),
            "Unsupported manifest media type: text/plain",
        ),
        (
            encode(oci_manifest(schemaVersion=3)),
            'Invalid image manifest: "schemaVersion" must be 2',
        ),
        (encode(oci_manifest(layers=None)), 'Invalid image manifest: "layers" must be a list'),
        (
            encode(oci_manifest(config="x")),
            "Invalid image config descriptor: expected a JSON object",
        ),
        (
            encode(oci_manifest(layers=[{"mediaType": "m", "digest": LAYER_DIGESTS[0]}])),
            'Invalid descriptor of layer 0: "size" must be a non-negative integer',
        ),
        (
            encode(
                oci_manifest(layers=[{"mediaType": "m", "digest": LAYER_DIGESTS[0], "size": True}])
            ),
            'Invalid descriptor of layer 0: "size" must be a non-negative integer',
        ),
        (
            encode(
                oci_manifest(layers=[{"mediaType": "m", "digest": "sha256:../../etc", "size": 1}])
            ),
            'Invalid descriptor of layer 0: bad digest "sha256:../../etc"',
        ),
        (
            encode(oci_manifest(layers=[{"digest": LAYER_DIGESTS[0], "size": 1}])),
            'Invalid descriptor of layer 0: "mediaType" must be a string',
        ),
        (
            encode(oci_manifest(annotations={"a": 1})),
            "Invalid manifest annotations: expected an object of strings",
        ),
    ],
)
def test_malformed_manifest_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(BootcError) as err:
        Manifest.parse(raw)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("application/vnd.oci.image.layer.v1.tar", LayerFormat(LayerCompression.NONE)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", LayerFormat(LayerCompression.GZIP)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", LayerFormat(LayerCompression.ZSTD)),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            LayerFormat(LayerCompression.NONE, nondistributable=True),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            LayerFormat(LayerCompression.GZIP, nondistributable=True),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            LayerFormat(LayerCompression.ZSTD, nondistributable=True),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+encrypted",
            LayerFormat(LayerCompression.NONE, encrypted=True),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            LayerFormat(LayerCompression.GZIP, encrypted=True),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd+encrypted",
            LayerFormat(LayerCompression.ZSTD, encrypted=True),
        ),
        ("application/vnd.docker.image.rootfs.diff.tar", LayerFormat(LayerCompression.NONE)),
        (MEDIA_TYPE_DOCKER_LAYER_GZIP, LayerFormat(LayerCompression.GZIP)),
        (
            MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
            LayerFormat(LayerCompression.GZIP, nondistributable=True),
        ),
    ],
)
def test_layer_media_type_gives_its_format(media_type: str, expected: LayerFormat) -> None:
    assert LayerFormat.from_media_type(media_type) == expected
    assert LayerCompression.from_media_type(media_type) is expected.compression


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/vnd.oci.image.layer.v1.tar+gzip+zstd",
        "application/vnd.oci.image.layer.v1.tar+",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted",
        "",
    ],
)
def test_unknown_layer_media_type_is_refused_when_its_compression_is_asked(
    media_type: str,
) -> None:
    descriptor = Descriptor(media_type, LAYER_DIGESTS[0], 1)
    with pytest.raises(BootcError) as err:
        _ = descriptor.compression
    assert str(err.value) == f"Unknown layer media type: {media_type}"


def test_manifest_digest_is_sha256_of_the_exact_bytes() -> None:
    raw = encode(oci_manifest())
    assert manifest_digest(raw) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert manifest_digest(raw + b" ") != manifest_digest(raw)


@pytest.mark.parametrize(
    ("digest", "valid"),
    [
        ("sha256:" + "0" * 64, True),
        ("sha512:" + "a" * 128, True),
        ("sha256:" + "A" * 64, False),
        ("sha256:" + "0" * 63, False),
        ("md5:" + "0" * 32, False),
        ("sha256", False),
        ("sha256:/../../x", False),
        (None, False),
    ],
)
def test_digest_validation(digest: object, valid: bool) -> None:
    assert is_valid_digest(digest) is valid


def oci_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": {"Labels": {"org.opencontainers.image.version": "42.1", "version": "old"}},
        "rootfs": {"type": "layers", "diff_ids": LAYER_DIGESTS},
        "history": [{"created_by": "x"}],
    }
    config.update(overrides)
    return config


def test_config_parses_platform_labels_and_diff_ids() -> None:
    config = ImageConfig.parse(encode(oci_config()))
    assert (config.architecture, config.os) == ("amd64", "linux")
    assert config.created == "2024-05-01T12:00:00Z"
    assert config.labels["version"] == "old"
    assert config.diff_ids == tuple(LAYER_DIGESTS)
    assert config.raw["history"] == [{"created_by": "x"}]


def test_config_version_prefers_the_oci_label() -> None:
    assert ImageConfig.parse(encode(oci_config())).version == "42.1"
    only_version = oci_config(config={"Labels": {"version": "7"}})
    assert ImageConfig.parse(encode(only_version)).version == "7"
    assert ImageConfig.parse(encode(oci_config(config={}))).version is None


def test_config_without_labels_or_created_is_fine() -> None:
    raw = oci_config(config={"Labels": None})
    del raw["created"]
    config = ImageConfig.parse(encode(raw))
    assert config.labels == {}
    assert config.created is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": None}, 'Invalid image config: "architecture" must be a string'),
        ({"os": 1}, 'Invalid image config: "os" must be a string'),
        ({"rootfs": {"type": "layers"}}, 'Invalid image config: "rootfs.diff_ids" must be a list'),
        ({"rootfs": {"diff_ids": ["nope"]}}, 'Invalid image config: bad diff ID "nope"'),
        ({"config": []}, 'Invalid image config: "config" must be an object'),
        (
            {"config": {"Labels": {"a": 1}}},
            "Invalid image config labels: expected an object of strings",
        ),
    ],
)
def test_malformed_config_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(BootcError) as err:
        ImageConfig.parse(encode(oci_config(**overrides)))
    assert str(err.value) == message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_fail_with_bootc_error(raw: bytes) -> None:
    for parse in (Manifest.parse, ImageConfig.parse):
        with contextlib.suppress(BootcError):
            parse(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["schemaVersion", "mediaType", "config", "layers", "annotations", "manifests"]
        ),
        json_values,
    )
)
def test_arbitrary_json_manifests_fail_only_with_bootc_error(obj: dict[str, object]) -> None:
    with contextlib.suppress(BootcError):
        Manifest.parse(encode(obj))


@pytest.mark.parametrize(
    ("media_type", "known_by_toc"),
    [
        ("application/vnd.oci.image.layer.v1.tar+zstd", True),
        ("application/vnd.oci.image.layer.v1.tar+gzip", False),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", False),
    ],
)
def test_a_layer_is_known_by_its_table_of_contents_only_when_zstd(
    media_type: str, known_by_toc: bool
) -> None:
    # A stale zstd:chunked annotation on a gzip layer must not let a layer the storage
    # holds by that table of contents stand in for this blob.
    blob, toc = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    descriptor = Descriptor.from_json(
        {
            "mediaType": media_type,
            "digest": blob,
            "size": 1,
            "annotations": {"io.github.containers.zstd-chunked.manifest-checksum": toc},
        },
        "layer",
    )
    assert descriptor.known_as == ({blob, toc} if known_by_toc else {blob})
